"""One run from a composed config: build the tasks, model and method, train, and write the run
folder (metrics, summary, curve figure, checkpoints). A failure is recorded, never raised."""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cl_bench.checkpoint import keep_last, save_checkpoint, write_json
from cl_bench.data.sequences import build_task_sequence
from cl_bench.figures import plot_curves
from cl_bench.methods.base import Method
from cl_bench.methods.build import build_method
from cl_bench.metrics_log import MetricsLog, read_metrics
from cl_bench.provenance import device_description, git_state, resolve_device, versions
from cl_bench.scenario import Scenario
from cl_bench.summary import SUMMARY_FILE, result_summary
from cl_bench.trainer import Trainer
from cl_bench.validate import validate_config

log = logging.getLogger(__name__)

FAILED_SCORE = 0.0  # what a failed run returns to a sweeper that maximises Score: the worst Score


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


def task_end_checkpointer(run_dir: Path, keep: int):
    """A callback saving model and method state after each task, keeping the last `keep` files."""

    def save(task_idx: int, model: torch.nn.Module, method: Method) -> None:
        folder = run_dir / "checkpoints"
        state = {"task": task_idx, "model": model.state_dict(), "method": method.state_dict()}
        save_checkpoint(state, folder / f"task{task_idx:03d}.pt")
        keep_last(folder, "task*.pt", keep)

    return save


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the configured sequence in `run_dir`; returns the summary (status failed on failure)."""
    started = time.perf_counter()
    summary: dict = {"status": "running", **describe(cfg)}
    logger = instantiate(cfg.logger)
    metrics = MetricsLog(run_dir / "metrics.jsonl", listeners=[logger.log_row])
    try:
        validate_config(cfg)
        logger.start(cfg, run_dir)
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)
        summary["device"] = device_description(device)
        tasks = [task.to(device) for task in build_task_sequence(cfg.dataset)]
        summary["tasks"] = [task.name for task in tasks]
        scenario = Scenario(cfg.scenario, [task.n_classes for task in tasks])
        model = instantiate(cfg.model, input_shape=tasks[0].input_shape, n_outputs=scenario.n_outputs(0))
        method = build_method(cfg.method)
        trainer = Trainer(
            cfg,
            tasks,
            model.to(device),
            method,
            scenario,
            device,
            on_eval=metrics.append,
            on_task_end=task_end_checkpointer(run_dir, cfg.checkpoint.keep),
        )
        summary.update(result_summary(metrics.rows, tasks, trainer.run()))
        summary["status"] = "ok"
    except Exception as error:
        summary.update(status="failed", error=f"{type(error).__name__}: {error}")
        (run_dir / "error.txt").write_text(traceback.format_exc())
        log.error("run failed: %s (traceback in %s)", summary["error"], run_dir / "error.txt")
    except BaseException:
        summary.update(status="interrupted", error="stopped by the user or a signal")
        raise
    finally:
        summary.update(wall_time_s=time.perf_counter() - started, git=git_state(), versions=versions())
        write_json(summary, run_dir / SUMMARY_FILE)
        if metrics.rows:
            frame = read_metrics(run_dir)
            frame.to_csv(run_dir / "metrics.csv", index=False)
            plot_curves(frame, run_dir / "curves.png", f"{summary['method']} (lr={summary['lr']:g})")
        logger.finish(summary, run_dir)
    return summary


def objective(summary: dict) -> float:
    """The value a sweeper maximises: the Score, or the worst Score for a failed run."""
    score = summary.get("score")
    return score if summary["status"] == "ok" and score is not None and math.isfinite(score) else FAILED_SCORE
