"""Averaged Gradient Episodic Memory (Chaudhry, Ranzato, Rohrbach & Elhoseiny 2019, "Efficient Lifelong Learning
with A-GEM")."""

from __future__ import annotations

import torch
from torch import Tensor

from cl_bench.core.per_sample_grads import trainable_parameters
from cl_bench.data.task import Task
from cl_bench.methods.base import Method, TrainContext
from cl_bench.methods.params import count
from cl_bench.methods.replay import Replay


def project(grads: list[Tensor], refs: list[Tensor]) -> list[Tensor]:
    """A-GEM's eq. 11 on the flat vectors g = cat(grads), g_ref = cat(refs): g̃ = g − (gᵀg_ref / g_refᵀg_ref)·g_ref
    if gᵀg_ref < 0, else g; returned block by block. No host sync: the test is a `torch.where`."""
    dot = torch.stack([(g * r).sum() for g, r in zip(grads, refs)]).sum()
    norm = torch.stack([r.square().sum() for r in refs]).sum()
    coef = torch.where(dot < 0, dot / norm, torch.zeros_like(dot))
    return [g - coef * r for g, r in zip(grads, refs)]


class AGEM(Method):
    """Train on the task's loss alone, but take a step whose gradient does not increase the loss on an episodic
    memory of the earlier tasks (to first order): Chaudhry et al.'s A-GEM, eq. 11,

        g̃ = g − (gᵀg_ref / g_refᵀg_ref)·g_ref   if gᵀg_ref < 0,   else g,

    g the step's gradient and g_ref the gradient of the mean loss (the scenario's, with the exemplars' own
    task ids) on `memory_batch_size` exemplars drawn uniformly without replacement from the memory (a second
    forward/backward in the model's current mode, at every step after the first task), both over all
    trainable parameters as one flat vector. A parameter with no gradient of its own counts as 0 in g.

    The memory is Replay's (methods/replay.py): at most `memory_size` examples, ⌊memory_size / n⌋ per class over
    the n classes seen, chosen at random with the method generator when a task ends (the older classes keep
    the first of theirs). Chaudhry et al. keep a per-task memory; a class-balanced one is the same when tasks
    have equally many classes. The projection runs in `after_backward`, last among gradient edits
    (`gradient_edit_order = 1`); A-GEM adds no loss term and does nothing during task A, so it shares the
    cached task A.
    """

    gradient_edit_order = 1
    selectable = ("memory_size",)

    def __init__(self, memory_size: int = 200, memory_batch_size: int | None = 128):
        self.memory = Replay(memory_size=memory_size)
        self.memory_batch_size = None if memory_batch_size is None else count("memory_batch_size", memory_batch_size)

    def check(self, tasks: list[Task]) -> None:
        """The memory holds at least one exemplar of every class of `tasks`."""
        self.memory.check(tasks)

    def after_task(self, ctx: TrainContext) -> None:
        """Add the task's exemplars to the memory, shrinking the older classes' share."""
        self.memory.after_task(ctx)

    def reference_batch(self, ctx: TrainContext) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, task ids) of min(memory_batch_size (null: batch_size), memory) exemplars drawn uniformly
        without replacement with the method generator."""
        memory = self.memory.memory
        size = len(memory["y"])
        m = min(self.memory_batch_size or ctx.batch_size, size)
        pick = torch.randperm(size, generator=ctx.generator)[:m].to(memory["y"].device, non_blocking=True)
        return tuple(memory[key].index_select(0, pick).to(ctx.device) for key in ("x", "y", "task_ids"))

    def after_backward(self, ctx: TrainContext) -> None:
        """Replace the step's gradient by its projection when it conflicts with g_ref (no-op during task A)."""
        if not self.memory.memory:
            return
        params = list(trainable_parameters(ctx.model).values())
        x, y, task_ids = self.reference_batch(ctx)
        with torch.enable_grad():
            loss = ctx.scenario.loss(ctx.model(x), y, task_ids)
            refs = torch.autograd.grad(loss, params, allow_unused=True)
        refs = [torch.zeros_like(p) if r is None else r for p, r in zip(params, refs)]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        for p, projected in zip(params, project(grads, refs)):
            p.grad = projected

    def state_dict(self) -> dict:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state)
