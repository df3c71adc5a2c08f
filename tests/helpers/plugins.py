"""Test-only plug-ins reached through the real config (`logger._target_`, `method._target_`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from omegaconf import DictConfig

from cl_bench.loggers.base import RunLogger
from cl_bench.methods.baseline import Baseline


class SignalAtRow(RunLogger):
    """Sends this process `signum` when the `row`-th metrics row (0-based) is logged."""

    def __init__(self, row: int, signum: int = signal.SIGTERM):
        self.row, self.signum, self.seen = row, signum, 0

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        self.seen = 0

    def log_row(self, row: dict, index: int) -> None:
        if self.seen == self.row:
            os.kill(os.getpid(), self.signum)
        self.seen += 1


class NaNAtStep(Baseline):
    """The baseline, with a NaN loss term from global step `step` on (counted from 1)."""

    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def loss_terms(self, ctx, batch, logits) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"poison": logits.new_tensor(float("nan") if self.calls >= self.step else 0.0)}


class HostReadInStep(Baseline):
    """The baseline, reading a value of every step on the host (`float(...)`): a synchronisation per step on a GPU."""

    def loss_terms(self, ctx, batch, logits) -> dict[str, torch.Tensor]:
        self.last = float(logits.detach().sum())
        return {}


class TermNamed(Baseline):
    """The baseline, adding a zero loss term named `name`."""

    def __init__(self, name: str):
        self.name = name

    def loss_terms(self, ctx, batch, logits) -> dict[str, torch.Tensor]:
        return {self.name: logits.sum() * 0}
