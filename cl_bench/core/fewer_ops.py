"""Loss-term arithmetic with fewer autograd ops than its textbook form, at every training step.

Each helper gives the same values and gradients, bit for bit, as the plain expression named in its
docstring (tests/test_speed_paths.py); each op saved is one op less in the forward and the backward
pass of every step (benchmarks/methods.py measures them). The methods call these helpers so that
their own code reads as their papers' equations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def sum_of(terms: Iterable[Tensor]) -> Tensor | None:
    """t₁ + t₂ + … left to right, None for no terms: Σ without the `0 +` that starts the textbook sum."""
    total = None
    for term in terms:
        total = term if total is None else total + term
    return total


def plus_constant(total: Tensor | None, constant: float) -> Tensor:
    """`total + constant` (`constant` alone for no total), without the add when the constant is 0."""
    if total is None:
        return torch.tensor(constant)
    return total + constant if constant else total


def columns(logits: Tensor, units: slice) -> Tensor:
    """`logits[:, units]`, or `logits` itself when `units` is every column (domain-IL's shared head):
    no slice op and no slice backward."""
    if units.indices(logits.shape[1]) == (0, logits.shape[1], 1):
        return logits
    return logits[:, units]


def leading_block(parameter: Tensor, shape: torch.Size) -> Tensor:
    """`parameter[:shape[0], :shape[1], …]`, or the parameter itself when it has that shape: no view op."""
    if parameter.shape == shape:
        return parameter
    return parameter[tuple(slice(0, n) for n in shape)]


def mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """Σ wᵢ·vᵢ / max(Σ wᵢ, 1); with no `weight` (every wᵢ = 1) the plain mean Σ vᵢ / n, the same value
    without the product and the weight sum."""
    if weight is None:
        return values.sum() / len(values)
    return (values * weight).sum() / weight.sum().clamp(min=1)
