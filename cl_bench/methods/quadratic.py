"""The quadratic penalty EWC, L2, SI and MAS keep, Σ_i F_i·(θ_i − θ*_i)² + C, and how two of them
combine: summed into one at O(parameters) per step (`merged`) or re-anchored (online EWC).

A training step takes no value of the penalty and builds no graph for it: the methods add its closed-form
gradient 2λ·F·(θ − θ*) to the gradients after backward (`Quadratic.add_gradient`, two `_foreach_` ops
over the parameter list). Its value (`Quadratic.value`) is computed only where the trainer logs a row or
checks for a non-finite loss (`Method.penalty_values`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cl_bench.core.fewer_ops import leading_block, plus_constant, sum_of


@dataclass
class Quadratic:
    """Σ_i fisher_i·(θ_i − center_i − center_low_i)² + constant over named parameters, each parameter
    taken to its stored shape. `center_low` (empty for one task's term) holds what the parameter
    dtype's rounding of a merged center dropped, so θ − center keeps full precision near the center."""

    fisher: dict[str, Tensor]
    center: dict[str, Tensor]
    center_low: dict[str, Tensor] = field(default_factory=dict)
    constant: float = 0.0
    _weighted_center: list[Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def value(self, params: dict[str, Tensor]) -> Tensor:
        terms = ((f * self._offset(params, name, f).square()).sum() for name, f in self.fisher.items())
        return plus_constant(sum_of(terms), self.constant)

    def add_gradient(self, params: dict[str, Tensor], scale: float) -> None:
        """grad += 2·scale·F·(θ − center − center_low) on each parameter's stored block, in place and without
        a graph, as 2·scale·(F·θ − b) with b = F·(center + center_low) computed once (in float64, then rounded):
        two `_foreach_` ops over the parameter list and no buffer per step. Its rounding error is a few ulps
        of 2·scale·F·|θ|, the gradient's change when θ moves by one ulp."""
        if self._weighted_center is None:
            self._weighted_center = [(f.double() * self._center64(name)).to(f.dtype) for name, f in self.fisher.items()]
        thetas = [stored_part(params, name, f).detach() for name, f in self.fisher.items()]
        grads = [gradient_block(params[name], f.shape) for name, f in self.fisher.items()]
        with torch.no_grad():
            torch._foreach_addcmul_(grads, list(self.fisher.values()), thetas, value=2 * scale)
            torch._foreach_sub_(grads, self._weighted_center, alpha=2 * scale)

    def _center64(self, name: str) -> Tensor:
        """center + center_low of parameter `name`, in float64."""
        center = self.center[name].double()
        return center + self.center_low[name].double() if name in self.center_low else center

    def _offset(self, params: dict[str, Tensor], name: str, f: Tensor) -> Tensor:
        """θ − center (− center_low) on the stored block of parameter `name`."""
        diff = stored_part(params, name, f) - self.center[name]
        return diff - self.center_low[name] if name in self.center_low else diff

    def scaled(self, factor: float) -> Quadratic:
        fisher = {name: f * factor for name, f in self.fisher.items()}
        return Quadratic(fisher, self.center, self.center_low, self.constant * factor)

    def merged(self, other: Quadratic) -> Quadratic:
        """One quadratic equal to self + other, in float64: a(θ−μ)² + b(θ−ν)² = (a+b)(θ−m)² + ab/(a+b)·(μ−ν)²
        with m = (aμ+bν)/(a+b). No ΣFθ² − 2θΣFθ* + ΣFθ*² expansion: it cancels in float32 near θ*."""
        fisher, center, low = dict(self.fisher), dict(self.center), dict(self.center_low)
        constant = self.constant + other.constant
        for name, b in other.fisher.items():
            a = _padded(self.fisher.get(name), b)
            mu = _padded(self.center.get(name), b) + _padded(self.center_low.get(name), b)
            nu = other.center[name].double()
            total = a + b.double()
            safe = total.clamp(min=torch.finfo(torch.float64).tiny)
            m = torch.where(total > 0, (a * mu + b * nu) / safe, nu)
            dtype = other.center[name].dtype
            fisher[name], center[name] = total.to(b.dtype), m.to(dtype)
            low[name] = (m - center[name].double()).to(dtype)
            constant += float((a * b / safe * (mu - nu).square()).sum())
        return Quadratic(fisher, center, low, constant)

    def reanchored(self, new: Quadratic) -> Quadratic:
        """Schwarz et al.'s online step: `new`'s center, the Fishers added (rows a head gained since
        `self` carry only `new`'s)."""
        fisher = {name: f + _padded(self.fisher.get(name), f).to(f.dtype) for name, f in new.fisher.items()}
        return Quadratic(fisher, new.center)

    def state(self) -> dict:
        return {"fisher": self.fisher, "center": self.center, "center_low": self.center_low, "constant": self.constant}


def gradient_block(parameter: Tensor, shape: torch.Size) -> Tensor:
    """The leading block of `parameter`'s gradient with `shape`, to add a penalty's gradient to in place; a
    parameter without a gradient gets zeros first, as autograd would have given it one through the penalty."""
    if parameter.grad is None:
        parameter.grad = torch.zeros_like(parameter)
    return leading_block(parameter.grad, shape)


def stored_part(params: dict[str, Tensor], name: str, stored: Tensor) -> Tensor:
    """The leading block of parameter `name` with the stored shape (a grown head keeps its old rows first)."""
    if name not in params:
        raise KeyError(f"the penalty holds parameter {name!r}, which the model no longer has")
    p = params[name]
    if p.dim() != stored.dim() or any(now < then for now, then in zip(p.shape, stored.shape)):
        raise ValueError(
            f"parameter {name!r} has shape {tuple(p.shape)}, smaller than its stored {tuple(stored.shape)}"
        )
    return leading_block(p, stored.shape)


def _padded(t: Tensor | None, like: Tensor) -> Tensor:
    """`t` in float64, zero-padded to the shape of `like` (rows a head gained since carry no penalty)."""
    out = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    if t is not None:
        out[tuple(slice(0, n) for n in t.shape)] = t
    return out
