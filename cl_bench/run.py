"""One run from a composed config: build the tasks, model and method, train, and write the run
folder (metrics, summary, curve figure, checkpoints). A failure is recorded, never raised."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cl_bench.checkpoint import CheckpointDir, load_checkpoint, write_json
from cl_bench.data.sequences import build_task_sequence
from cl_bench.data.task import Task
from cl_bench.figure_worker import CurveFigure
from cl_bench.first_task_cache import FirstTaskCache, first_task_key
from cl_bench.methods.build import build_method
from cl_bench.models.head import grow_head
from cl_bench.metrics_log import METRICS_CSV, METRICS_FILE, MetricsLog, write_metrics_csv
from cl_bench.precision import device_model_options
from cl_bench.provenance import device_description, git_state, resolve_device, versions
from cl_bench.scenario import Scenario
from cl_bench.summary import SUMMARY_FILE, result_summary
from cl_bench.trainer import IncompatibleState, StopRequested, Trainer
from cl_bench.validate import validate_config

log = logging.getLogger(__name__)

FAILED_SCORE = 0.0  # what a failed run returns to a sweeper that maximises Score: the worst Score
TASKS_FILE = "tasks.json"


def describe(cfg: DictConfig) -> dict:
    """The keys a report groups and labels runs by."""
    method = OmegaConf.to_container(cfg.method, resolve=True)
    return {
        "method": method.pop("label", None) or method["_target_"].rsplit(".", 1)[-1],
        "method_params": {k: v for k, v in method.items() if k not in ("_target_", "lr")},
        "lr": cfg.lr,
        "seed": cfg.seed,
        "scenario": cfg.scenario,
        "datasets": list(cfg.dataset.keys()),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
    }


def resumed_config(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, Path]:
    """With `resume=<run folder>`, that run's own config and folder; else the given ones."""
    if not cfg.get("resume"):
        return cfg, run_dir
    folder = Path(cfg.resume).expanduser()
    saved = folder / ".hydra" / "config.yaml"
    if not saved.exists():
        raise FileNotFoundError(f"resume={cfg.resume}: no run folder there ({saved} is missing)")
    config = OmegaConf.load(saved)
    if "optimizer_state" not in config:
        raise IncompatibleState(
            f"resume={cfg.resume}: this run was made by cl_bench 0.1, whose settings meant something else (each "
            f"task started a fresh optimiser; EWC's mode=online was today's mode=sum); start a new run instead"
        )
    log.info("resuming %s (this invocation's own folder %s stays empty)", folder, run_dir)
    return config, folder


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
    """`init_from`: a cl_bench checkpoint (its model) or a plain state dict, loaded safely."""
    state = load_checkpoint(Path(path).expanduser())
    weights = state.get("model", state)
    if "head.weight" in weights:
        grow_head(model, weights["head.weight"].shape[0])
    model.load_state_dict(weights)


def train(cfg: DictConfig, run_dir: Path, metrics: MetricsLog, summary: dict) -> None:
    """Build everything from `cfg` and train the sequence, resuming from the run's last checkpoint."""
    validate_config(cfg)
    method = build_method(cfg.method)  # its settings are checked here, before any data is read
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    summary["device"] = device_description(device)
    sequence = build_task_sequence(cfg.dataset, cfg.get("task_order", "fixed"), cfg.seed)
    tasks = [task.to(device) for task in sequence]
    summary["tasks"] = [task.name for task in tasks]
    method.check(tasks)
    write_json([task_record(task) for task in tasks], run_dir / TASKS_FILE)
    scenario = Scenario(cfg.scenario, [task.n_classes for task in tasks])
    model = instantiate(cfg.model, input_shape=tasks[0].input_shape, n_outputs=scenario.n_outputs(0),
                        **device_model_options(cfg.model, device))
    if cfg.init_from:
        load_initial_weights(model, cfg.init_from)
    checkpoints = CheckpointDir(run_dir / "checkpoints", cfg.checkpoint.keep)
    trainer = Trainer(cfg, tasks, model.to(device), method, scenario, device, metrics.append, checkpoints.save)
    latest = checkpoints.latest()
    if latest is not None:
        state = load_checkpoint(latest, device)
        metrics.resume(state["rows_logged"])
        trainer.load_state_dict(state)
        summary["resumed_from"] = str(latest)
        log.info("resumed from %s", latest)
    first_task = None
    if cfg.first_task.cache and not method.changes_first_task:
        first_task = FirstTaskCache(Path(cfg.cache_dir), first_task_key(cfg, device.type), metrics)
    with stop_on_signals(trainer):
        result = trainer.run(first_task)
    summary["first_task_cached"] = bool(first_task and first_task.hit)
    summary.update(result_summary(metrics.rows, tasks, result, cfg.accuracy))


def run_experiment(cfg: DictConfig, run_dir: Path, figure: CurveFigure | None = None) -> dict:
    """Train the configured sequence in `run_dir` (or resume it); returns the summary, whose status
    says whether it failed. Whatever was computed stays in the run folder. `figure` draws the curve
    figure (one is started here if not given: `cl-bench` starts it before importing torch)."""
    started = time.perf_counter()
    summary: dict = {"status": "running"}
    cfg, run_dir = resumed_config(cfg, run_dir)
    summary.update(describe(cfg))
    logger = instantiate(cfg.logger)
    metrics = MetricsLog(run_dir / METRICS_FILE, listeners=[logger.log_row])
    figure = figure or CurveFigure()  # its helper imports matplotlib while this process works
    try:
        logger.start(cfg, run_dir)
        train(cfg, run_dir, metrics, summary)
        summary["status"] = "ok"
    except StopRequested as stop:
        summary.update(status="interrupted", error=f"{stop}; continue with: cl-bench resume={run_dir}")
    except Exception as error:
        summary.update(status="failed", error=f"{type(error).__name__}: {error}")
        (run_dir / "error.txt").write_text(traceback.format_exc())
        log.error("run failed: %s (traceback in %s)", summary["error"], run_dir / "error.txt")
    except BaseException:
        summary.update(status="interrupted", error=f"stopped at once; continue with: cl-bench resume={run_dir}")
        raise
    finally:
        summary.update(wall_time_s=time.perf_counter() - started, git=git_state(), versions=versions())
        write_json(summary, run_dir / SUMMARY_FILE)
        if metrics.rows:
            write_metrics_csv(metrics.rows, run_dir / METRICS_CSV)  # the rows in memory: no re-read, no pandas
            figure.draw(metrics.rows, run_dir / "curves.png", f"{summary['method']} (lr={summary['lr']:g})")
        figure.close()
        logger.finish(summary, run_dir)
    return summary


def objective(summary: dict) -> float:
    """The value a sweeper maximises: the Score, or the worst Score for a failed run."""
    score = summary.get("score")
    return score if summary["status"] == "ok" and score is not None and math.isfinite(score) else FAILED_SCORE
