"""One run from a composed config: build the tasks, model and method, train, and write the run
folder (metrics, summary, curve figure, checkpoints). A failure is recorded, never raised."""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cl_bench.core.errors import one_line
from cl_bench.core.experiment import at, matches
from cl_bench.core.files import write_json, write_text
from cl_bench.core.layout import (
    CURVES_FIGURE,
    ERROR_FILE,
    FAILED_SCORE,
    METRICS_CSV,
    METRICS_FILE,
    SUMMARY_FILE,
    TASKS_FILE,
)
from cl_bench.core.scenario import Scenario
from cl_bench.data.sequences import build_task_sequence
from cl_bench.data.task import Task
from cl_bench.engine.device import device_description, device_model_options, resolve_device
from cl_bench.engine.first_task_cache import FirstTaskCache, first_task_key
from cl_bench.engine.settings import trainer_settings
from cl_bench.engine.threads import resolve_threads
from cl_bench.engine.trainer import StopRequested, Trainer
from cl_bench.engine.validate import check_against_tasks, validate_config
from cl_bench.methods.build import build_methods
from cl_bench.models.head import grow_head
from cl_bench.records.checkpoint import CheckpointDir, load_weights_file
from cl_bench.records.description import describe
from cl_bench.records.figure_worker import CurveFigure
from cl_bench.records.metrics_log import MetricsLog, write_metrics_csv
from cl_bench.records.provenance import git_state, versions
from cl_bench.records.run_folder import (
    ConfigMismatch,
    NotResumable,
    RunLock,
    bind,
    check_claim,
    check_folder_to_write,
    check_resumable,
    differences,
    load_saved_config,
    restore_hydra_files,
    saved_config_path,
)
from cl_bench.records.saved_config import LABEL_KEYS, UnsafeConfig, targets_of
from cl_bench.records.summary import result_summary

log = logging.getLogger(__name__)
ABSENT = object()  # a key the config does not hold



def resumed_config(cfg: DictConfig, override_keys: Sequence[str]) -> tuple[DictConfig, Path]:
    """With `resume=<run folder>`: that run's own config and folder. The overrides given with `resume=` are
    taken when they do not change the run (its identity, records.run_folder.run_identity, as a folder check
    asks: threads, device, checkpoint, logger, ... change none, nor a value equal to the saved one); else the
    resume is refused, naming what would change."""
    folder = Path(cfg.resume).expanduser()
    check_resumable(folder, cfg.resume)
    found = load_saved_config(folder, targets_of(cfg))
    saved = found.config
    if OmegaConf.select(saved, "score.window", default=None) is None:
        raise NotResumable(
            f"resume={cfg.resume}: this run was started before score.window existed (its checkpoints follow a Score "
            f"window that included the last task's step 0), and cannot be continued; start a new run (its results "
            f"stay readable by cl-bench-report)"
        )
    take_own_values(saved, found.literal, cfg, override_keys, folder)
    given = copy.deepcopy(saved)
    for key in override_keys:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if key != "resume" and value is not ABSENT:  # (`+debug=tiny` selects a preset: no key of its name)
            OmegaConf.update(given, key, value, merge=False, force_add=True)
    changed = differences(saved, given)
    if changed:
        raise ConfigMismatch(
            f"resume={cfg.resume}: {changed} would change the experiment; a resumed run keeps its config (only "
            f"keys such as threads, device, checkpoint.*, logger may be given with resume=): start a new run for "
            f"another config"
        )
    return given, folder


def take_own_values(saved: DictConfig, literal: dict[str, str], cfg: DictConfig, override_keys: Sequence[str],
                    folder: Path) -> None:
    """The keys of a resumed run's config whose values read outside it (kept as literal text when read,
    engine.saved_config) take this invocation's value where its own config has the same text there (e.g.
    conf/logger/wandb.yaml's `mode: ${oc.env:WANDB_MODE,online}`), or the command line gives them; a label
    keeps its text; any other is refused, naming the key."""
    given = [key for key in override_keys if key != "resume"]
    for key, text in literal.items():
        own = at(OmegaConf.to_container(cfg, resolve=False), key)
        if own == text:
            OmegaConf.update(saved, key, own, merge=False)
        elif not matches(key, LABEL_KEYS) and not matches(key, given):
            raise UnsafeConfig(
                f"resume={folder}: {key}={text} in the run's config reads outside it (the environment, the time, "
                f"...); a saved config is read as data: give {key}=... on the command line"
            )


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGTERM / SIGINT ask the trainer to checkpoint and stop at the end of its current step;
    a second SIGINT stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame) -> None:
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("signal %s: checkpointing and stopping after this step", signal.Signals(signum).name)
        trainer.stop_requested = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def task_record(task: Task) -> dict:
    """What the run folder's tasks.json keeps of a task: name, classes, split sizes, input shape, and
    the builder's `info` (image folders: class counts, dropped classes, unmatched folders, skipped files...)."""
    sizes = {split: len(getattr(task, split)) for split in ("train", "val", "test")}
    return {"name": task.name, "classes": task.class_names, "split_sizes": sizes,
            "input_shape": list(task.input_shape), **task.info}


def load_initial_weights(model: torch.nn.Module, path: str) -> None:
    """`init_from`: a cl_bench checkpoint (its model, checksum verified) or a plain state dict, loaded safely."""
    state = load_weights_file(Path(path).expanduser())
    weights = state.get("model", state)
    if "head.weight" in weights:
        grow_head(model, weights["head.weight"].shape[0])
    model.load_state_dict(weights)


def train(cfg: DictConfig, run_dir: Path, metrics: MetricsLog, summary: dict, clock: WallClock) -> None:
    """Build everything from `cfg` and train the sequence, resuming from the run's last checkpoint."""
    method = build_methods(cfg)  # its settings are checked here, before any data is read
    bind(run_dir, cfg)  # the folder is this config's from now on
    torch.manual_seed(cfg.seed)
    threads, summary["threads_source"] = resolve_threads(cfg.threads)
    if threads:
        torch.set_num_threads(threads)
    summary["threads"] = torch.get_num_threads()
    device = resolve_device(cfg.device)
    summary["device"] = device_description(device)
    sequence = build_task_sequence(cfg.dataset, cfg.get("task_order", "fixed"), cfg.seed)
    tasks = [task.to(device) for task in sequence]
    summary["tasks"] = [task.name for task in tasks]
    method.check(tasks)
    check_against_tasks(cfg, tasks)
    write_json([task_record(task) for task in tasks], run_dir / TASKS_FILE)
    scenario = Scenario(cfg.scenario, [task.n_classes for task in tasks], cfg.class_head)
    model = instantiate(cfg.model, input_shape=tasks[0].input_shape, n_outputs=scenario.n_outputs(0),
                        **device_model_options(cfg.model, device))
    model.head = method.head(model.head)  # a method's own output layer (methods/base.py), before any weights load
    if cfg.init_from:
        load_initial_weights(model, cfg.init_from)
    checkpoints = CheckpointDir(run_dir / "checkpoints", cfg.checkpoint.keep)

    def save(state: dict) -> None:
        checkpoints.save({**state, "wall_time_s": clock.total()})

    trainer = Trainer(trainer_settings(cfg), tasks, model.to(device), method, scenario, device, metrics.append, save)
    found = checkpoints.latest_verified(device)  # CorruptState when none of the run's checkpoints verifies
    if found is not None:
        latest, state = found
        metrics.resume(state["rows_logged"])
        trainer.load_state_dict(state)
        clock.before = state.get("wall_time_s", 0.0)
        summary["resumed_from"] = str(latest)
        log.info("resumed from %s", latest)
    else:
        metrics.resume(0)  # from the start: no rows of a run killed before its first checkpoint
    first_task = None
    if cfg.first_task.cache and not method.changes_first_task:
        key = first_task_key(cfg, device.type, len(tasks))
        first_task = FirstTaskCache(Path(cfg.cache_dir), key, metrics, device)
    with stop_on_signals(trainer):
        result = trainer.run(first_task)
    summary["first_task_cached"] = result.first_task_cached
    summary.update(result_summary(metrics.rows, [task.name for task in tasks], result, cfg.accuracy, cfg.score.window))


@dataclass
class WallClock:
    """The run's wall time over all its parts: `before` is what the checkpoint resumed from had used."""

    started: float = field(default_factory=time.perf_counter)
    before: float = 0.0

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started


def run_experiment(
    cfg: DictConfig, run_dir: Path, figure: CurveFigure | None = None, override_keys: Sequence[str] = ()
) -> dict:
    """Train the configured sequence in `run_dir` (or resume it); returns the summary, whose status
    says how it ended. Whatever was computed stays in the run folder. `figure` draws the curve figure
    (one is started here if not given: `cl-bench` starts it before importing torch). `override_keys`:
    the keys given on the command line (what `resume=` may take over).

    A folder that is another process's, or another config's run, or a `resume=` that cannot be done is
    refused before anything is written: status "refused", and no summary in any folder."""
    clock = WallClock()
    with ExitStack() as stack:
        resumed = Path(cfg.resume).expanduser() if cfg.get("resume") else None
        try:
            if resumed is not None:
                cfg, run_dir = resumed_config(cfg, override_keys)
            check_folder_to_write(run_dir)
            stack.enter_context(RunLock(run_dir))
            check_claim(run_dir, cfg)
        except Exception as error:  # noqa: BLE001 (any refusal: a one-line message, nothing written)
            if figure is not None:
                figure.close()
            return {"status": "refused", "error": f"{error}"}
        finally:
            if resumed is not None and saved_config_path(resumed).is_file():
                restore_hydra_files(resumed)  # Hydra's record of this start in the run's folder: the run's own again
        return run_in_folder(cfg, run_dir, figure or CurveFigure(), clock)


def run_in_folder(cfg: DictConfig, run_dir: Path, figure: CurveFigure, clock: WallClock) -> dict:
    """The run in its (locked, claimed) folder: ends with a summary whatever happens inside."""
    summary: dict = {"status": "running"}
    logger, metrics = None, None
    try:
        summary.update(describe(cfg))
        validate_config(cfg)
        logger = instantiate(cfg.logger)
        metrics = MetricsLog(run_dir / METRICS_FILE, listeners=[logger.log_row])
        logger.start(cfg, run_dir)
        train(cfg, run_dir, metrics, summary, clock)
        summary["status"] = "ok"
    except StopRequested as stop:
        summary.update(status="interrupted", error=f"{stop}; continue with: cl-bench resume={run_dir}")
    except Exception as error:
        summary.update(status="failed", error=f"{type(error).__name__}: {one_line(error)}")
        _attempt(lambda: write_text(traceback.format_exc(), run_dir / ERROR_FILE), run_dir / ERROR_FILE, summary)
        log.debug("run failed: %s (details in %s)", summary["error"], run_dir / ERROR_FILE)
    except BaseException:
        summary.update(status="interrupted", error=f"stopped at once; continue with: cl-bench resume={run_dir}")
        raise
    finally:
        summary.update(wall_time_s=clock.total(), git=git_state(), versions=versions())
        rows = metrics.rows if metrics is not None else []
        if rows:  # the rows in memory: no re-read, no pandas
            _attempt(lambda: write_metrics_csv(rows, run_dir / METRICS_CSV), run_dir / METRICS_CSV, summary)
            title = f"{summary.get('method', 'run')} (lr={summary.get('lr', '?')})"
            _attempt(lambda: figure.draw(rows, run_dir / CURVES_FIGURE, title), run_dir / CURVES_FIGURE, summary)
        figure.close()
        if logger is not None:
            _attempt(lambda: logger.finish(summary, run_dir), "the logger", summary)
        _attempt(lambda: write_json(summary, run_dir / SUMMARY_FILE), run_dir / SUMMARY_FILE, summary)
    return summary


def _attempt(action: Callable[[], object], what: object, summary: dict) -> None:
    """Run one of a run's closing writes; a failure (a full disk) is logged in one line and fails the
    run, without stopping the writes after it."""
    try:
        action()
    except Exception as error:  # noqa: BLE001
        log.error("could not write %s: %s", what, error)
        if summary.get("status") == "ok":
            summary.update(status="failed", error=f"could not write {what}: {error}")


def objective(summary: dict) -> float:
    """The value a sweeper maximises: the Score, or the worst Score for a failed run."""
    score = summary.get("score")
    return score if summary["status"] == "ok" and score is not None and math.isfinite(score) else FAILED_SCORE
