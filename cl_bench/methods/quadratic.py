"""The quadratic penalty EWC, L2, SI and MAS keep, Σ_i F_i·(θ_i − θ*_i)² + C, and how two of them
combine: summed into one at O(parameters) per step (`merged`) or re-anchored (online EWC).

At a training step the methods take the penalty without autograd (`Quadratic.pull`): its value at the
step's parameters, computed with no graph and returned as a detached loss term (logged, and summed into
the total the trainer's NaN guard watches), and its closed-form gradient 2λ·F·(θ − θ*), added to the
gradients in place after backward (`Pull.apply`) with torch's `_foreach_` ops over the parameter list."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cl_bench.engine.fewer_ops import leading_block, plus_constant, sum_of


@dataclass
class Quadratic:
    """Σ_i fisher_i·(θ_i − center_i − center_low_i)² + constant over named parameters, each parameter
    taken to its stored shape. `center_low` (empty for one task's term) holds what the parameter
    dtype's rounding of a merged center dropped, so θ − center keeps full precision near the center."""

    fisher: dict[str, Tensor]
    center: dict[str, Tensor]
    center_low: dict[str, Tensor] = field(default_factory=dict)
    constant: float = 0.0
    _work: dict[str, tuple[Tensor, Tensor]] | None = field(default=None, init=False, repr=False, compare=False)

    def value(self, params: dict[str, Tensor]) -> Tensor:
        terms = ((f * self._offset(params, name, f).square()).sum() for name, f in self.fisher.items())
        return plus_constant(sum_of(terms), self.constant)

    def pull(self, params: dict[str, Tensor], scale: float) -> tuple[Tensor, Pull]:
        """scale·`value(params)` without an autograd graph, and its gradient 2·scale·F·(θ − center − center_low)
        on each stored block, to add after backward. The value is Σ_i (F·d)_i·d_i from the same d = θ − center
        the gradient uses (one dot product per parameter tensor). d and F·d are written into buffers kept
        from step to step (no allocation per step): the returned Pull is valid until the next call."""
        if self._work is None:
            self._work = {name: (torch.empty_like(f), torch.empty_like(f)) for name, f in self.fisher.items()}
        dots = []
        with torch.no_grad():
            for name, f in self.fisher.items():
                diff, weighted = self._work[name]
                torch.sub(stored_part(params, name, f).detach(), self.center[name], out=diff)
                if name in self.center_low:
                    diff.sub_(self.center_low[name])
                torch.mul(diff, f, out=weighted)
                dots.append(torch.dot(weighted.view(-1), diff.view(-1)))
            value = plus_constant(torch.stack(dots).sum(), self.constant) * scale
        names = list(self.fisher)
        return value, Pull([params[name] for name in names], [self._work[name][1] for name in names], 2 * scale)

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


@dataclass
class Pull:
    """A penalty's gradient at the step's parameters, waiting for backward: `alpha`·`direction` on the
    leading block of each parameter (the block a stored term covers; rows a head gained since carry none)."""

    params: list[Tensor]
    direction: list[Tensor]
    alpha: float

    def apply(self) -> None:
        """grad += alpha·direction on each parameter's stored block, in place (a parameter without a gradient
        gets one, as autograd would have given it through the penalty)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [leading_block(p.grad, d.shape) for p, d in zip(self.params, self.direction)]
        torch._foreach_add_(grads, self.direction, alpha=self.alpha)


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
