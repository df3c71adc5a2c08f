"""`cl-bench`: the Hydra application. Composes the package's configs (cl_bench.conf), runs one experiment per job.

Messages, not tracebacks: a job that fails, is refused or is stopped says so in one line (the
traceback of a failure stays in its run folder's error.txt, and is printed too with
hydra.verbose=true). Ctrl-C on a sweep stops the sweep: the current job checkpoints, the jobs after
it are not started (each gets a summary saying "not_run"), the report is written and the command
exits non-zero.

Each job prints one line when it starts (its folder) and one when it ends (its Score, or how it
ended); a tqdm bar on a terminal in between. Log records go to the job's log file (`<run>/app.log`),
the terminal gets warnings only (conf/config.yaml `hydra.job_logging`). In a SLURM job, a run stopped
because the job was cancelled (scancel) ends "cancelled", not "interrupted"; one stopped because the
job was pre-empted or requeued ends its job without a result, to be continued (slurm_ending).
`cl-bench --help` starts with our usage and the version (`hydra.help.header`, which reads the version
through the `cl_bench_version` resolver).
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cl_bench.cli.optuna_study import default_study_name
from cl_bench.core.layout import CONFIG_PACKAGE, ERROR_FILE, FAILED_SCORE, SUMMARY_FILE
from cl_bench.core.overrides import override_keys
from cl_bench.core.version import VERSION

if not OmegaConf.has_resolver("cl_bench_version"):  # `${cl_bench_version:}` in the --help text
    OmegaConf.register_new_resolver("cl_bench_version", lambda: VERSION)
if not OmegaConf.has_resolver("cl_bench_study"):  # an Optuna search's default study name (optuna_score.yaml)
    OmegaConf.register_new_resolver("cl_bench_study", default_study_name)

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


def not_run(run_dir: Path) -> float:
    """A job of a stopped sweep: recorded as not run (in a folder without a run), nothing trained."""
    from cl_bench.core.not_run import record_not_run

    record_not_run(run_dir, "the sweep was stopped before this job started")
    print(f"cl-bench: not run (the sweep was stopped): {run_dir}", file=sys.stderr)
    return FAILED_SCORE


def start_line(hydra_cfg: DictConfig, folder: Path, multirun: bool) -> str:
    """What a job prints when it starts: its number and overrides in a sweep, and its folder."""
    if not multirun:
        return f"cl-bench: started · {folder}"
    from hydra.core.utils import filter_overrides

    overrides = " ".join(filter_overrides(list(hydra_cfg.overrides.task)))
    return f"cl-bench: #{hydra_cfg.job.num} started ({overrides or 'no overrides'}) · {folder}"


HELPER_IGNORES = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def figure_helper():
    """The curve figure's helper process (started now, so that it imports matplotlib while this process
    imports torch), ignoring SIGTERM, SIGUSR1 and SIGUSR2: on SLURM, scancel, pre-emption and time limits
    signal every process of the job (the USR2 before a time limit, submitit's cue to requeue, too), and
    the helper must outlive the signal that asks the run to stop, to draw its figure (it ends by itself
    when this process ends)."""
    from cl_bench.records.figure_worker import CurveFigure

    if threading.current_thread() is not threading.main_thread():
        return CurveFigure()
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in HELPER_IGNORES}  # the helper inherits
    try:  # SIG_IGN (exec keeps it)
        return CurveFigure()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def slurm_ending(summary: dict, folder: Path) -> dict:
    """An interrupted run in a SLURM job that SLURM is ending (cl_bench.cli.slurm_job): cancelled (scancel),
    its summary says "cancelled" (SLURM will not start it again); pre-empted or requeued, the job ends
    without a result, so that the sweep waits for it while SLURM starts it again and it continues from its
    checkpoint. (At a time limit submitit has requeued the job already; a signal alone leaves the run
    "interrupted".)"""
    from cl_bench.cli import slurm_job

    reason = slurm_job.why_stopped()
    job = slurm_job.shown_job_id()
    if reason == slurm_job.REQUEUED or (reason == slurm_job.PREEMPTED and slurm_job.requeue()):
        sys.exit(f"cl-bench: SLURM job {job} was {reason}: the run stopped at a checkpoint, and continues from it "
                 f"when SLURM starts the job again ({folder})")
    if reason != slurm_job.CANCELLED:
        return summary
    from cl_bench.core.files import write_json

    summary = {**summary, "status": "cancelled", "error": f"SLURM job {job} was cancelled; {summary.get('error')}"}
    write_json(summary, folder / SUMMARY_FILE)
    return summary


def result_line(summary: dict, folder: Path) -> str:
    """What a finished job prints: its Score (val and test) and its folder, or how it ended."""
    if summary["status"] == "ok":
        score, test = summary.get("score"), summary.get("score_test")
        shown = f"Score {100 * score:.1f}%" if score is not None else "Score n/a"
        shown += f" (test {100 * test:.1f}%)" if test is not None else ""
        return f"cl-bench: {summary.get('method', 'run')}: {shown} · {folder}"
    where = f"traceback in {folder / ERROR_FILE}" if summary["status"] == "failed" else str(folder)
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
            return not_run(own_dir)
    folder = Path(cfg.resume).expanduser() if cfg.get("resume") else own_dir
    print(start_line(hydra_cfg, folder, multirun), flush=True)
    figure = figure_helper()  # its helper process imports matplotlib while this one imports torch
    from cl_bench.engine.run import (  # torch and the rest only when a job runs (not for --help)
        objective,
        run_experiment,
    )

    typed = OmegaConf.to_container(hydra_cfg.overrides.task)  # as typed: `lr=${nope}` stays unresolved text
    summary = run_experiment(cfg, own_dir, figure, override_keys(typed))
    if summary["status"] == "interrupted":
        summary = slurm_ending(summary, folder)
    if multirun and summary["status"] == "interrupted":
        _sweep_stopped = True
    line = result_line(summary, folder)
    if summary["status"] == "failed" and hydra_cfg.verbose and (folder / ERROR_FILE).exists():
        print((folder / ERROR_FILE).read_text(), file=sys.stderr)  # hydra.verbose=true: the traceback too
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
