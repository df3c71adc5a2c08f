"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018), written
as the two-cities post writes it."""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor

from cl_bench.data.task import Task
from cl_bench.methods.base import Method, TrainContext
from cl_bench.methods.fisher import LABELS, diagonal_fisher
from cl_bench.methods.params import choice, count, number, together, within_tasks
from cl_bench.methods.quadratic import Quadratic

SCOPES = ("all", "last")
MODES = ("separate", "sum", "online")


class EWC(Method):
    """L(θ) = L_task(θ) + λ·Σ_j Σ_i F_j,i·(θ_i − θ*_j,i)², the two-cities post's L_B + λ·L_EWC (no ½).

    Kirkpatrick et al. (2017, eq. 3) write L_B(θ) + Σ_i (λ_K/2)·F_i·(θ_i − θ*_A,i)²: this loss with
    λ = λ_K/2. F_j is the diagonal Fisher of task j (`fisher.diagonal_fisher`) on `fisher_samples`
    of its training examples (all of them if null, or if the split is smaller; the count used is kept
    in `fisher_counts`), drawn without replacement with the method generator, `fisher_label`
    choosing y; θ*_j the parameters when task j ended. Head rows added after task j carry no term of task j.

    scope: ``all`` penalises every earlier task, ``last`` only the most recent (Sörberg's two runs).
    gamma: at each new task the earlier tasks' Fishers are multiplied by γ (1: plain sum), so task j's
    term weighs γ^(tasks since j).
    mode: ``separate`` keeps one (F_j, θ*_j) per task, O(parameters × tasks) per step; ``sum`` keeps
    the sum of the terms as one quadratic (Sörberg's running sums; `quadratic.Quadratic.merged`), the
    same value and gradient at O(parameters) per step; ``online`` is Schwarz et al.'s (2018) online
    EWC, λ·Σ_i F̃_i·(θ_i − θ*_j,i)² with F̃ ← γ·F̃ + F_j anchored at the latest θ*_j only (an
    approximation of the sum, also O(parameters)). ``sum`` and ``online`` need scope ``all``.
    fisher_samples: null averages over every training example of the task (van de Ven & Tolias).

    A step takes the penalty without autograd: `after_backward` adds its gradient 2λ·Σ_j F_j·(θ − θ*_j) to
    the gradients in place (`quadratic.Quadratic.add_gradient`); its value, the logged ``loss/ewc``, is
    computed only where a row is logged or the loss checked (`penalty_values`). In every mode the
    step uses the stored terms summed into one quadratic (`Quadratic.merged`, computed once per task): the
    same value and gradient as the per-task sum, at O(parameters) per step; ``separate`` still stores
    (and checkpoints) each task's term.
    """

    selectable = ("lambda", "gamma")

    loss_name = "ewc"

    def __init__(
        self,
        lambda_: float = 1000.0,
        fisher_samples: int | None = 200,
        fisher_label: str = "empirical",
        scope: str = "all",
        mode: str = "separate",
        gamma: float = 1.0,
        fisher_batch_size: int = 128,
    ):
        self.lambda_ = number("lambda", lambda_, "≥ 0", lambda v: v >= 0)
        self.gamma = number("gamma", gamma, "in [0, 1]", lambda v: 0 <= v <= 1)
        self.fisher_samples = None if fisher_samples is None else count("fisher_samples", fisher_samples)
        self.fisher_batch_size = count("fisher_batch_size", fisher_batch_size)
        self.fisher_label = choice("fisher_label", fisher_label, LABELS, renamed={"true": "empirical"})
        self.scope = choice("scope", scope, SCOPES)
        self.mode = choice("mode", mode, MODES)
        together(mode == "separate" or scope != "last", "mode", mode,
                 "keeps one term over every task; with method.scope=last use mode=separate")
        self.terms: list[Quadratic] = []
        self.fisher_counts: list[int] = []
        self._summed: Quadratic | None = None  # the terms as one quadratic, made at the first step of a task

    def check(self, tasks: list[Task]) -> None:
        """Every task whose Fisher a later task uses must hold `fisher_samples` training examples."""
        within_tasks("fisher_samples", self.fisher_samples, tasks)

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
        """Store the ended task's term F_j·(θ − θ*_j)², the earlier ones weighed by γ, as `mode` keeps them."""
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
        self._summed = None

    def summed(self) -> Quadratic:
        """The stored terms as one quadratic: Σ_j F_j(θ − θ*_j)² merged exactly (`Quadratic.merged`)."""
        if self._summed is None:
            self._summed = reduce(Quadratic.merged, self.terms)
        return self._summed

    def penalty(self, params: dict[str, Tensor]) -> Tensor:
        """λ·Σ_j F_j(θ − θ*_j)² at `params`."""
        return self.lambda_ * self.summed().value(params)

    def add_penalty_gradient(self, params: dict[str, Tensor]) -> None:
        """grad += the penalty's gradient 2λ·Σ_j F_j(θ − θ*_j), in place."""
        self.summed().add_gradient(params, self.lambda_)

    def after_backward(self, ctx: TrainContext) -> None:
        """Add the penalty's gradient (none before the first task has ended)."""
        if self.terms:
            self.add_penalty_gradient(dict(ctx.model.named_parameters()))

    def penalty_values(self, ctx: TrainContext) -> dict[str, Tensor]:
        """The penalty at the current parameters (none before the first task has ended)."""
        if not self.terms:
            return {}
        with torch.no_grad():
            return {self.loss_name: self.penalty(dict(ctx.model.named_parameters()))}

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
        self._summed = None
