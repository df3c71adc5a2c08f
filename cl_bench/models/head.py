"""Growing a model's output layer when a task brings new classes."""

from __future__ import annotations

import torch
from torch import nn


def grow_head(model: nn.Module, n_outputs: int) -> bool:
    """Give `model.head` `n_outputs` rows, keeping the existing rows exactly; True if it grew.

    New rows take PyTorch's default Linear initialisation.
    """
    old: nn.Linear = model.head
    if n_outputs < old.out_features:
        raise ValueError(f"cannot shrink the head from {old.out_features} to {n_outputs} outputs")
    if n_outputs == old.out_features:
        return False
    new = nn.Linear(old.in_features, n_outputs, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[: old.out_features].copy_(old.weight)
        if old.bias is not None:
            new.bias[: old.out_features].copy_(old.bias)
    model.head = new
    return True


def reset_parameters(model: nn.Module) -> None:
    """Re-initialise every layer of `model` as at construction (PyTorch's defaults, from the global
    random stream)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
