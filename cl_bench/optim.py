"""Optimizers from config: Adam (default) or SGD with momentum, both with weight decay."""

from __future__ import annotations

from typing import Iterable

import torch
from omegaconf import DictConfig


def build_optimizer(cfg: DictConfig, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """A fresh optimizer for one task (state is not carried from task to task)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer.name={cfg.name!r}: choose adam or sgd")
