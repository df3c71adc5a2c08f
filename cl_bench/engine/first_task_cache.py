"""Task A trained once: the state after the first task's training, shared by every run whose
first task is determined by the same settings, under `cache_dir`, guarded by a file lock so
parallel jobs wait for the one that trains it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig

from cl_bench.core.experiment import experiment_identity
from cl_bench.core.state_format import STATE_FORMAT
from cl_bench.engine.trainer import Trainer
from cl_bench.records.checkpoint import CorruptState, load_checkpoint, remove_partial_writes, save_checkpoint
from cl_bench.records.metrics_log import MetricsLog

log = logging.getLogger(__name__)

# The keys of a run's experiment (core/experiment.py) that do not change its first task: the later
# tasks' learning rate, budget and optimiser carry-over, the methods (a method whose first task trains otherwise
# never takes it from the cache), and which accuracy the Score follows and over which window (SCORE_KEYS: the
# window lies in the last task, so they do change the state of a run whose only task is the first, whose best
# point the state holds). Every other key of the experiment is in the key: a key added later (e.g. `class_head`)
# splits the cache, never shares a state trained under another setting.
SCORE_KEYS = ("accuracy", "score")
LATER_TASK_KEYS = ("method", "plus", "lr", "steps", "epochs", "optimizer_state", *SCORE_KEYS)


def first_task_key(cfg: DictConfig, device_type: str, n_tasks: int) -> str:
    """A hash of everything that determines the trained task-A state of a run of `n_tasks` tasks (and the init
    file's identity)."""
    later = LATER_TASK_KEYS if n_tasks > 1 else tuple(key for key in LATER_TASK_KEYS if key not in SCORE_KEYS)
    fields = experiment_identity(cfg, ignore=later)
    fields["seed"] = cfg.seed
    if cfg.init_from:
        stat = Path(cfg.init_from).expanduser().stat()
        fields["init_file"] = [stat.st_size, stat.st_mtime_ns]
    fields["device"] = device_type
    fields["format"] = STATE_FORMAT  # what the entry holds (CHANGELOG.md)
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class FirstTaskCache:
    """Replaces training task 0: loads the cached state, or trains it and stores it (also in place of
    an entry that does not verify)."""

    def __init__(self, cache_dir: Path, key: str, metrics: MetricsLog, device: torch.device):
        self.path = cache_dir / "first_task" / f"{key}.pt"
        self.metrics = metrics
        self.device = device

    def __call__(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.path}.lock"):
            remove_partial_writes(self.path.parent, self.path.name)
            state = self._load()
            if state is not None:
                rows = state.pop("rows")
                trainer.import_first_task_state(state, rows)
                trainer.result.first_task_cached = True
                log.info("task A loaded from %s", self.path)
                return
            rows_before = len(self.metrics.rows)
            trainer.train_task(0)
            state = trainer.export_first_task_state()
            state["rows"] = self.metrics.rows[rows_before:]
            save_checkpoint(state, self.path)

    def _load(self) -> dict | None:
        """The cached state; None when there is none, or when it does not verify (it is retrained)."""
        if not self.path.exists():
            return None
        try:
            return load_checkpoint(self.path, self.device)
        except CorruptState as error:
            log.warning("%s; retraining task A to replace it", error)
            return None
