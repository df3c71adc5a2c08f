"""`cl-bench`: the Hydra application. Composes the package's configs (cl_bench.conf), runs one experiment per job.

Messages, not tracebacks: a job that fails, is refused or is stopped says so in one line (the
traceback of a failure stays in its run folder's error.txt, and is printed too with hydra.verbose=true). Ctrl-C on a sweep stops the sweep: the
current job checkpoints, the jobs after it are not started (each gets a summary saying "not_run"),
the report is written and the command exits non-zero.
"""

from __future__ import annotations

import gc
import shutil
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cl_bench import CONFIG_PACKAGE

_frozen = False
_sweep_stopped = False  # a sweep was asked to stop (Ctrl-C / SIGTERM): later jobs are not run


def freeze_startup_objects() -> None:
    """Once per process, exempt the objects alive now (Hydra's and the config's, ~200k) from the cyclic
    garbage collector: they live as long as the process, and every full collection during the run
    (the imports of torch and torch._dynamo trigger several) would scan them again (~0.25 s in all).
    Only once: freezing again in a later job of a multirun could keep an earlier job's garbage."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


def _stop_sweep(signum: int, frame: object) -> None:
    """Between jobs of a sweep, a signal stops the sweep (a second Ctrl-C stops at once)."""
    global _sweep_stopped
    if _sweep_stopped and signum == signal.SIGINT:
        raise KeyboardInterrupt
    _sweep_stopped = True


def watch_sweep_signals() -> None:
    """In a sweep run by this process, Ctrl-C / SIGTERM between jobs stop the sweep (during a job,
    the run's own handler checkpoints it first)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _stop_sweep)


def override_keys() -> list[str]:
    """The config keys this job's command line sets (`method`, `method.kappa`, `lr`...)."""
    task = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    overrides = OverridesParser.create().parse_overrides(task)
    return [override.key_or_group for override in overrides]


def not_run(cfg: DictConfig, run_dir: Path) -> float:
    """A job of a stopped sweep: recorded as not run, nothing trained."""
    from cl_bench.engine.checkpoint import write_json
    from cl_bench.engine.run import FAILED_SCORE
    from cl_bench.results.summary import SUMMARY_FILE

    write_json({"status": "not_run", "error": "the sweep was stopped before this job started"}, run_dir / SUMMARY_FILE)
    print(f"cl-bench: not run (the sweep was stopped): {run_dir}", file=sys.stderr)
    return FAILED_SCORE


def result_line(summary: dict, folder: Path) -> str:
    """What a finished job prints: its Score (val and test) and its folder, or how it ended."""
    if summary["status"] == "ok":
        score, test = summary.get("score"), summary.get("score_test")
        shown = f"Score {100 * score:.1f}%" if score is not None else "Score n/a"
        shown += f" (test {100 * test:.1f}%)" if test is not None else ""
        return f"cl-bench: {summary.get('method', 'run')}: {shown} · {folder}"
    where = f"traceback in {folder / 'error.txt'}" if summary["status"] == "failed" else str(folder)
    return f"cl-bench: run {summary['status']}: {summary.get('error')} ({where})"


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")
def main(cfg: DictConfig) -> float:
    global _sweep_stopped
    freeze_startup_objects()
    hydra_cfg = HydraConfig.get()
    own_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        watch_sweep_signals()
        if _sweep_stopped:
            return not_run(cfg, own_dir)
    from cl_bench.results.figure_worker import CurveFigure

    figure = CurveFigure()  # its helper process imports matplotlib while this one imports torch
    from cl_bench.engine.run import (  # torch and the rest only when a job runs (not for --help)
        objective,
        run_experiment,
    )

    summary = run_experiment(cfg, own_dir, figure, override_keys())
    folder = Path(cfg.resume).expanduser() if cfg.get("resume") else own_dir
    if folder != own_dir:  # resume=: this invocation's own folder holds only Hydra's files
        shutil.rmtree(own_dir, ignore_errors=True)
    if multirun and summary["status"] == "interrupted":
        _sweep_stopped = True
    line = result_line(summary, folder)
    if summary["status"] == "failed" and hydra_cfg.verbose and (folder / "error.txt").exists():
        print((folder / "error.txt").read_text(), file=sys.stderr)  # hydra.verbose=true: the traceback too
    if not multirun:
        # The process ends after this single job, its files written and closed: spare it the
        # interpreter's final collections over everything torch and the run left (~0.6 s).
        gc.freeze()
        if summary["status"] != "ok":
            sys.exit(line)
    print(line, file=sys.stdout if summary["status"] == "ok" else sys.stderr, flush=True)
    return objective(summary)


if __name__ == "__main__":
    main()
