"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), written as the two-cities post writes it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cl_bench.data.task import Task
from cl_bench.errors import ConfigError
from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.fisher import LABELS, diagonal_fisher
from cl_bench.methods.params import choice, count, number

SCOPES = ("all", "last")
MODES = ("separate", "sum", "online")


@dataclass
class Quadratic:
    """Σ_i fisher_i·(θ_i − center_i − center_low_i)² + constant over named parameters, each parameter
    sliced to its stored shape. `center_low` (empty for one task's term) holds what the parameter
    dtype's rounding of a merged center dropped, so θ − center keeps full precision near the center."""

    fisher: dict[str, Tensor]
    center: dict[str, Tensor]
    center_low: dict[str, Tensor] = field(default_factory=dict)
    constant: float = 0.0

    def value(self, params: dict[str, Tensor]) -> Tensor:
        total = None  # no `0.0 +` and no `+ 0.0`: the same value in fewer ops on every training step
        for name, f in self.fisher.items():
            diff = stored_part(params, name, f) - self.center[name]
            if name in self.center_low:
                diff = diff - self.center_low[name]
            term = (f * diff.square()).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.tensor(self.constant)
        return total + self.constant if self.constant else total

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


def stored_part(params: dict[str, Tensor], name: str, stored: Tensor) -> Tensor:
    """The leading block of parameter `name` with the stored shape (a grown head keeps its old rows first)."""
    if name not in params:
        raise KeyError(f"the penalty holds parameter {name!r}, which the model no longer has")
    p = params[name]
    if p.dim() != stored.dim() or any(now < then for now, then in zip(p.shape, stored.shape)):
        raise ValueError(
            f"parameter {name!r} has shape {tuple(p.shape)}, smaller than its stored {tuple(stored.shape)}"
        )
    if p.shape == stored.shape:
        return p  # the whole parameter (no view: one op less forward and backward per step)
    return p[tuple(slice(0, n) for n in stored.shape)]


def _padded(t: Tensor | None, like: Tensor) -> Tensor:
    """`t` in float64, zero-padded to the shape of `like` (rows a head gained since carry no penalty)."""
    out = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    if t is not None:
        out[tuple(slice(0, n) for n in t.shape)] = t
    return out


class EWC(Method):
    """L_task + λ·Σ_j Σ_i F_j,i (θ_i − θ*_j,i)², the two-cities post's L_B + λ·L_EWC (no 1/2).

    Kirkpatrick et al. write Σ_j (λ_K/2)·F_j(θ − θ*_j)²: that is this loss with λ = λ_K/2.
    F_j: diagonal Fisher (`fisher.diagonal_fisher`) of task j on `fisher_samples` of its training
    examples (all of them if the split is smaller; the count used is kept in `fisher_counts`),
    drawn without replacement with the method generator, with `fisher_label` choosing y.
    θ*_j: the parameters when task j ended. Head rows added after task j carry no term of task j.

    scope: ``all`` penalises every earlier task, ``last`` only the most recent (Sörberg's two runs).
    gamma: at each new task the earlier tasks' Fishers are multiplied by γ (1: plain sum), so task j's
    term weighs γ^(tasks since j).
    mode: ``separate`` keeps one (F_j, θ*_j) per task, a step costs O(parameters × tasks);
    ``sum`` keeps the running sums of Sörberg's report as one quadratic ΣF·(θ − μ)² + C with μ = ΣFθ*/ΣF and
    C = Σ_j F_j(θ*_j − μ)², merged in float64 once per task (μ kept as a rounded value plus its
    rounding error): the same value and gradient as the sum of separate terms, at O(parameters) per
    step; ``online`` is Schwarz et al.'s (2018) online EWC: one running Fisher F̃ ← γ·F̃ + F_j
    anchored at the latest θ*_j only, λ·Σ F̃(θ − θ*_j)² (an approximation of the sum, also
    O(parameters)). ``sum`` and ``online`` need scope ``all``.
    fisher_samples: null averages over every training example of the task (van de Ven & Tolias).
    """

    selectable = ("lambda", "gamma")

    loss_name = "ewc"

    def __init__(
        self,
        lambda_: float = 1000.0,
        fisher_samples: int | None = 200,
        fisher_label: str = "true",
        scope: str = "all",
        mode: str = "separate",
        gamma: float = 1.0,
        fisher_batch_size: int = 128,
    ):
        self.lambda_ = number("lambda", lambda_, "≥ 0", lambda v: v >= 0)
        self.gamma = number("gamma", gamma, "in [0, 1]", lambda v: 0 <= v <= 1)
        self.fisher_samples = None if fisher_samples is None else count("fisher_samples", fisher_samples)
        self.fisher_batch_size = count("fisher_batch_size", fisher_batch_size)
        # Hydra reads an unquoted `fisher_label=true` override as the boolean.
        self.fisher_label = choice("fisher_label", "true" if fisher_label is True else fisher_label, LABELS)
        self.scope = choice("scope", scope, SCOPES)
        self.mode = choice("mode", mode, MODES)
        if mode != "separate" and scope == "last":
            raise ValueError(
                f"method.mode={mode} keeps one term over every task; with method.scope=last use mode=separate"
            )
        self.terms: list[Quadratic] = []
        self.fisher_counts: list[int] = []

    def check(self, tasks: list[Task]) -> None:
        """Every task whose Fisher a later task uses must hold `fisher_samples` training examples."""
        for task in tasks[:-1]:
            if self.fisher_samples is not None and self.fisher_samples > len(task.train):
                raise ConfigError(
                    f"method.fisher_samples={self.fisher_samples}: task {task.name!r} has only "
                    f"{len(task.train)} training examples; choose at most {len(task.train)}"
                )

    def importance(self, ctx: TrainContext) -> dict[str, Tensor]:
        """F of the task that just ended, by trainable parameter name (over all of its training
        examples if it has fewer than `fisher_samples`: the runner's `check` refuses that case)."""
        split = ctx.tasks[ctx.task_idx].train
        n = len(split) if self.fisher_samples is None else min(self.fisher_samples, len(split))
        index = torch.randperm(len(split), generator=ctx.generator)[:n]
        self.fisher_counts.append(n)
        return diagonal_fisher(
            ctx.model,
            split,
            index,
            ctx.task_idx,
            ctx.scenario,
            self.fisher_label,
            self.fisher_batch_size,
            ctx.generator,
        )

    def after_task(self, ctx: TrainContext) -> None:
        fisher = self.importance(ctx)
        params = dict(ctx.model.named_parameters())
        new = Quadratic(fisher, {name: params[name].detach().clone() for name in fisher})
        old = self.terms if self.gamma == 1 else [term.scaled(self.gamma) for term in self.terms]
        if self.scope == "last" or not old:
            self.terms = [new]
        elif self.mode == "sum":
            self.terms = [old[0].merged(new)]
        elif self.mode == "online":
            self.terms = [old[0].reanchored(new)]
        else:
            self.terms = old + [new]

    def penalty(self, ctx: TrainContext) -> Tensor | None:
        """Σ_j F_j(θ − θ*_j)² over the stored terms (None before the first task has ended)."""
        if not self.terms:
            return None
        params = dict(ctx.model.named_parameters())
        values = [term.value(params) for term in self.terms]
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        penalty = self.penalty(ctx)
        return {} if penalty is None else {self.loss_name: self.lambda_ * penalty}

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "scope": self.scope,
            "terms": [term.state() for term in self.terms],
            "fisher_counts": list(self.fisher_counts),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("mode", "scope"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"the checkpoint was written with method.{key}={state[key]}, this run has {getattr(self, key)}"
                )
        self.terms = [
            Quadratic(t["fisher"], t["center"], t["center_low"], float(t["constant"])) for t in state["terms"]
        ]
        self.fisher_counts = list(state["fisher_counts"])
