"""What the trainer reads of the composed config, read once into a typed, frozen object."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from cl_bench.engine.optim import build_optimizer, carried_optimizer


@dataclass(frozen=True)
class Budget:
    """A task's training budget: `epochs` when given, else `steps`."""

    steps: int | None
    epochs: float | None

    def steps_for(self, n_examples: int, batch_size: int) -> int:
        """The task's steps over `n_examples` in batches of `batch_size`."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_examples / batch_size))
        return int(self.steps)


@dataclass(frozen=True)
class OptimizerFactory:
    """The `optimizer` config group (a partial torch.optim class) as a factory of optimisers."""

    config: DictConfig

    def new(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """A new optimiser over `params` at learning rate `lr`."""
        return build_optimizer(self.config, params, lr)

    def carried(self, previous: torch.optim.Optimizer, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """An optimiser over `model`'s parameters holding `previous`'s state, at learning rate `lr`."""
        return carried_optimizer(previous, self.config, model, lr)


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer's settings: the first task's and the later tasks' learning rate and budget, batch
    sizes, how often to evaluate and checkpoint, the seed, the forward precision, the accuracy kind
    the Score follows and its window (core/score.py), and the optimiser (`optimizer_state`: carry | fresh)."""

    batch_size: int
    eval_batch_size: int
    first_lr: float
    first_budget: Budget
    lr: float
    budget: Budget
    eval_every: int
    checkpoint_every: int | None
    seed: int
    precision: str
    accuracy: str
    score_window: str
    optimizer_state: str
    optimizer: OptimizerFactory

    def lr_of(self, task_idx: int) -> float:
        return self.first_lr if task_idx == 0 else self.lr

    def budget_of(self, task_idx: int) -> Budget:
        return self.first_budget if task_idx == 0 else self.budget


def trainer_settings(cfg: DictConfig) -> TrainerSettings:
    """The trainer's settings from a composed (validated) config."""
    return TrainerSettings(
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        first_lr=cfg.first_task.lr,
        first_budget=Budget(cfg.first_task.steps, cfg.first_task.get("epochs")),
        lr=cfg.lr,
        budget=Budget(cfg.steps, cfg.get("epochs")),
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint.every,
        seed=cfg.seed,
        precision=cfg.precision,
        accuracy=cfg.accuracy,
        score_window=cfg.score.window,
        optimizer_state=cfg.optimizer_state,
        optimizer=OptimizerFactory(cfg.optimizer),
    )
