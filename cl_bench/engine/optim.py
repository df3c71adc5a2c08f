"""The optimiser: built from the `optimizer` config group (a partial torch.optim class), and carried
from task to task (`optimizer_state: carry`, as a Keras model compiled once, van de Ven's code and
Avalanche do) or started afresh at every task (`optimizer_state: fresh`)."""

from __future__ import annotations

from typing import Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

OPTIMIZER_STATES = ("carry", "fresh")


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """A new optimiser over `params` at learning rate `lr`."""
    return instantiate(cfg)(params, lr=lr)


def _padded(value: Tensor, shape: torch.Size) -> Tensor:
    """`value` zero-padded to `shape` (the leading block kept)."""
    out = value.new_zeros(shape)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def carried_optimizer(
    previous: torch.optim.Optimizer, cfg: DictConfig, model: nn.Module, lr: float
) -> torch.optim.Optimizer:
    """An optimiser over `model`'s parameters holding `previous`'s state, at learning rate `lr`.

    A head that grew since has new parameter objects: their state (Adam's moments, SGD's momentum)
    keeps the old rows and gives the added output units zeros, as units that were masked out until
    now would have (van de Ven's code keeps every unit and masks the inactive ones). Step counts
    are carried unchanged."""
    params = list(model.parameters())
    state = previous.state_dict()
    for index, per_param in state["state"].items():
        shape = params[index].shape
        for key, value in per_param.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != shape:
                per_param[key] = _padded(value, shape)
    optimizer = build_optimizer(cfg, params, lr)
    optimizer.load_state_dict(state)
    set_lr(optimizer, lr)
    return optimizer


def steps_on_host(state: dict) -> dict:
    """An optimiser's `state_dict()` with its step counts on the host, where torch.optim keeps them unless the optimiser
    is capturable or fused (its `load_state_dict` then moves them to the device). A state loaded onto the GPU (a
    checkpoint, the task-A cache) brings them there, and Adam reads each one on the host at every step: a
    synchronisation per parameter and step."""
    steps = {index: {key: value.cpu() if key == "step" and isinstance(value, Tensor) else value
                     for key, value in per_param.items()} for index, per_param in state["state"].items()}
    return {**state, "state": steps}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
