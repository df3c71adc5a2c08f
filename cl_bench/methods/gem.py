"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning")."""

from __future__ import annotations

import numpy as np
import quadprog
import torch
from torch import Tensor

from cl_bench.core.errors import ConfigError
from cl_bench.core.per_sample_grads import trainable_parameters
from cl_bench.data.task import Task
from cl_bench.methods.base import Method, TrainContext
from cl_bench.methods.params import count, number

MEMORY_KEYS = ("x", "y", "task_ids")


def project(grad: Tensor, memories: Tensor, margin: float = 0.5, eps: float = 1e-3) -> tuple[Tensor, Tensor]:
    """GEM's projection (eqs. 10-13): the update g̃ closest to the step's gradient g (`grad`, a vector) that
    increases no earlier task's loss to first order, ⟨g̃, g_k⟩ ≥ 0 for every row g_k of `memories` (G, one row
    per earlier task). Solved as the paper's dual in float64 with quadprog's Goldfarb–Idnani solver,

        min_v ½ vᵀ(GGᵀ + eps·I)v + gᵀGᵀv   subject to   v ≥ margin,      g̃ = Gᵀv + g,

    `margin` GEM's code's memory strength (Mammoth's `gamma`; the paper's dual has v ≥ 0) and `eps` the ridge
    its code adds to GGᵀ. The dual's optimality conditions give Gg̃ = μ − eps·v with μ ≥ 0: with eps = 0 every
    constraint holds; with eps > 0, ⟨g̃, g_k⟩ ≥ −eps·v_k. Returns (g̃, v), on `grad`'s device and dtype."""
    g = grad.detach().double().cpu().numpy()
    rows = memories.detach().double().cpu().numpy()
    gram = rows @ rows.T
    gram = 0.5 * (gram + gram.T) + eps * np.eye(len(rows))
    v = quadprog.solve_qp(gram, -(rows @ g), np.eye(len(rows)), np.full(len(rows), float(margin)))[0]
    projected = torch.from_numpy(rows.T @ v + g)
    return projected.to(grad.device, grad.dtype), torch.from_numpy(v)


class GEM(Method):
    """Train on the task's loss alone, but step along GEM's projection (`project`) of the gradient whenever it
    conflicts with an earlier task's: Lopez-Paz & Ranzato's eq. 11-13, as Mammoth (Buzzega et al. 2020) runs it.

    At each step after the first task, g_k is the gradient of the mean loss (the scenario's, with the exemplars'
    own task ids) on all of task k's episodic memory, one forward/backward pass per earlier task in the model's
    current mode; g the step's gradient, both over all trainable parameters as one flat vector (a parameter
    without a gradient counts as 0). If ⟨g, g_k⟩ < 0 for some k, the gradient becomes g̃ = Gᵀv + g from the dual
    quadratic program (`margin`, `eps`); otherwise it is left as it is. The episodic memory holds, for each task
    trained, ⌊memory_size / number of tasks⌋ of its training examples drawn uniformly without replacement with
    the method generator when the task ends (Mammoth's; the paper keeps each task's last examples of its stream).

    The projection runs in `after_backward`, last among gradient edits (`gradient_edit_order = 1`); GEM adds no
    loss term and does nothing during task A, so it shares the cached task A.
    """

    gradient_edit_order = 1
    selectable = ("memory_size",)

    def __init__(self, memory_size: int = 200, margin: float = 0.5, eps: float = 1e-3):
        self.memory_size = count("memory_size", memory_size)
        self.margin = number("margin", margin, "≥ 0", lambda v: v >= 0)
        self.eps = number("eps", eps, "≥ 0", lambda v: v >= 0)
        self.memory: dict[str, Tensor] = {}

    def per_task(self, tasks: list[Task]) -> int:
        """Examples of each task the memory keeps."""
        return self.memory_size // len(tasks)

    def check(self, tasks: list[Task]) -> None:
        """Every task but the last gets at least one exemplar, and no more than its training split holds."""
        if self.memory_size < len(tasks):
            raise ConfigError(f"method.memory_size={self.memory_size}: GEM keeps memory_size // tasks examples of "
                              f"each task, none of the {len(tasks)} tasks; choose at least {len(tasks)}")
        for task in tasks[:-1]:
            if self.per_task(tasks) > len(task.train):
                raise ConfigError(f"method.memory_size={self.memory_size}: {self.per_task(tasks)} examples of each "
                                  f"task, but task {task.name!r} has {len(task.train)}; choose at most "
                                  f"{len(task.train) * len(tasks)}")

    def after_task(self, ctx: TrainContext) -> None:
        """Add ⌊memory_size / tasks⌋ random training examples of the task just trained to the memory."""
        split = ctx.tasks[ctx.task_idx].train
        pick = torch.randperm(len(split), generator=ctx.generator)[: self.per_task(ctx.tasks)]
        x, y = split.gather(pick)
        new = {"x": x, "y": y, "task_ids": torch.full_like(y, ctx.task_idx)}
        self.memory = {key: torch.cat([self.memory[key], new[key]]) if self.memory else new[key] for key in new}

    def memory_gradients(self, ctx: TrainContext, params: list[Tensor]) -> Tensor:
        """G: one row per earlier task, the flat gradient of the mean loss on its memory."""
        rows = []
        for task_id in self.memory["task_ids"].unique().tolist():
            rows_of_task = (self.memory["task_ids"] == task_id).nonzero().squeeze(1)
            x, y, task_ids = (self.memory[key].index_select(0, rows_of_task).to(ctx.device) for key in MEMORY_KEYS)
            with torch.enable_grad():
                loss = ctx.scenario.loss(ctx.model(x), y, task_ids)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]))
        return torch.stack(rows)

    def after_backward(self, ctx: TrainContext) -> None:
        """Replace the step's gradient by its projection when it conflicts with an earlier task's (no-op during
        task A)."""
        if not self.memory:
            return
        params = list(trainable_parameters(ctx.model).values())
        memories = self.memory_gradients(ctx, params)
        grad = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in params])
        if not bool((memories @ grad < 0).any()):
            return
        projected, _ = project(grad, memories, self.margin, self.eps)
        for p, block in zip(params, projected.split([p.numel() for p in params])):
            p.grad = block.view_as(p)

    def state_dict(self) -> dict:
        return dict(self.memory)

    def load_state_dict(self, state: dict) -> None:
        if state and set(state) != set(MEMORY_KEYS):
            raise ValueError(f"GEM checkpoint state has keys {sorted(state)}, expected {list(MEMORY_KEYS)}")
        self.memory = dict(state)
