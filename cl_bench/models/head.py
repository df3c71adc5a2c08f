"""Growing a model's output layer when a task brings new classes: a linear head, or a method's cosine classifier
(models/cosine_head.py)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from cl_bench.models.cosine_head import CosineLinear

ROW_TENSORS = ("weight", "bias")  # a head's tensors with one row per output unit; its others (a scale) are whole


def head_like(head: nn.Module, rows: int, initialise: bool = True) -> nn.Module:
    """A new head of `head`'s kind, input width, device and dtype with `rows` output rows: PyTorch's default
    initialisation, or none (`initialise=False`, which leaves the global random stream untouched)."""
    if isinstance(head, CosineLinear):
        kind, options = CosineLinear, head.options()
    else:
        kind, options = nn.Linear, {"bias": head.bias is not None}
    where = {"device": head.weight.device, "dtype": head.weight.dtype}
    if not initialise:
        return skip_init(kind, head.in_features, rows, **options, **where)
    return kind(head.in_features, rows, **options).to(**where)  # drawn as the model's own layers were


def grow_head(model: nn.Module, n_outputs: int) -> bool:
    """Give `model.head` `n_outputs` rows, keeping the existing rows (and a cosine head's scale) exactly; True if
    it grew.

    New rows take PyTorch's default Linear initialisation.
    """
    old = model.head
    if n_outputs < old.out_features:
        raise ValueError(f"cannot shrink the head from {old.out_features} to {n_outputs} outputs")
    if n_outputs == old.out_features:
        return False
    new = head_like(old, n_outputs)
    kept = new.state_dict()
    with torch.no_grad():
        for name, value in old.state_dict().items():
            (kept[name][: old.out_features] if name in ROW_TENSORS else kept[name]).copy_(value)
    model.head = new
    return True


def reset_parameters(model: nn.Module) -> None:
    """Re-initialise every layer of `model` as at construction (PyTorch's defaults, from the global
    random stream)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
