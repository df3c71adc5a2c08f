"""One training step, as the trainer takes it and benchmarks/methods.py times it: the method's `extend_batch` →
forward → the task's cross-entropy and the method's terms → backward → `after_backward` → optimiser step →
`after_step`, each term's value added to running sums on the device (read at the next evaluation: no host
synchronisation in a step)."""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor

from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import Batch, Method, TrainContext, defined_hook

RESERVED_TERMS = frozenset({"task", "total"})  # the loss terms the trainer logs itself: no method may return one


def reserved_free(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """A method's loss terms, checked for a name the trainer's own terms have."""
    if not RESERVED_TERMS.isdisjoint(terms):
        name = min(RESERVED_TERMS.intersection(terms))
        raise ValueError(f"the method returns a loss term {name!r}; task and total are the trainer's own terms: "
                         f"give the method's term another name")
    return terms


def task_loss(scenario: Scenario, logits: Tensor, batch: Batch, n_own: int) -> Tensor:
    """Mean cross-entropy of the task's own examples: the batch's first `n_own` (a method that extends the batch,
    such as replay, adds its examples after them and weighs them itself)."""
    if len(batch.y) == n_own:
        return scenario.loss(logits, batch.y, batch.task_ids)
    return scenario.loss(logits[:n_own], batch.y[:n_own], batch.task_ids[:n_own])


@dataclass
class Step:
    """The step of `method` under `optimizer`, forward passes under `autocast`, terms summed in `sum_dtype`."""

    method: Method
    scenario: Scenario
    optimizer: torch.optim.Optimizer
    autocast: torch.autocast | contextlib.nullcontext
    sum_dtype: torch.dtype

    def __post_init__(self) -> None:
        self.after_backward = defined_hook(self.method, "after_backward")
        self.after_step = defined_hook(self.method, "after_step")

    def __call__(self, ctx: TrainContext, batch: Batch, task_weight: float, sums: dict[str, Tensor]) -> None:
        """One step on `batch` (the task's own examples), the task's cross-entropy weighted `task_weight`; each
        term's value added to its running sum in `sums`."""
        n_own = len(batch.y)
        batch = self.method.extend_batch(ctx, batch)
        with self.autocast:
            logits = ctx.model(batch.x)
            task = task_loss(self.scenario, logits, batch, n_own)
            terms = {"task": task if task_weight == 1 else task_weight * task,
                     **reserved_free(self.method.loss_terms(ctx, batch, logits))}
        loss = reduce(operator.add, terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward(ctx)
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step(ctx)
        terms["total"] = loss
        for name, value in terms.items():
            value = value.detach()
            sums[name] = sums[name] + value if name in sums else value.to(self.sum_dtype)
