"""Memory Aware Synapses (Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, ECCV 2018,
"Memory Aware Synapses: Learning what (not) to forget")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cl_bench.core.per_sample_grads import trainable_parameters
from cl_bench.data.task import Split, Task
from cl_bench.methods.base import Method, TrainContext
from cl_bench.methods.fisher import eval_mode
from cl_bench.methods.params import count, number, within_tasks
from cl_bench.methods.quadratic import Quadratic


def mas_importance(model: nn.Module, split: Split, index: Tensor, batch_size: int = 128) -> dict[str, Tensor]:
    """Ω_k = (1/N)·Σ_n |∂‖f(x_n)‖²₂ / ∂θ_k| over the examples `split.gather(index)`, f the model's outputs
    (all of its output units, in eval mode), one backward pass per example (the paper's eq. 2–4 with
    the squared ℓ2 norm of the outputs)."""
    if len(index) == 0:
        raise ValueError("MAS's importance needs at least one example")
    params = trainable_parameters(model)
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(index), batch_size):
            x, _ = split.gather(index[start : start + batch_size])
            for i in range(len(x)):
                out = model(x[i : i + 1]).square().sum()
                grads = torch.autograd.grad(out, list(params.values()), allow_unused=True)
                for name, grad in zip(params, grads):
                    if grad is not None:
                        sums[name] += grad.abs()
    return {name: total / len(index) for name, total in sums.items()}


class MAS(Method):
    """L(θ) = L_task(θ) + λ·Σ_k Ω_k·(θ_k − θ*_k)², Aljundi et al.'s
    eq. 3 as written (no ½), θ* the parameters when the previous task ended.

    At the end of every task, Ω_k += mean over `samples` of its training examples (all of them if null)
    of |∂‖f(x)‖²₂ / ∂θ_k|, f the model's outputs for the example (`mas_importance`), the examples drawn
    without replacement with the method generator as EWC's `fisher_samples`; θ* ← θ. Ω accumulates over
    tasks (the paper: "Ω_ij ← Ω_ij + new"), anchored at the latest θ*. Head rows added after a task
    carry no Ω of it. MAS does not act during task A, so it shares the cached task A.

    lambda: 1.0, the λ Aljundi et al. report for their object-recognition task sequences.

    The penalty is taken without autograd: its gradient 2λ·Ω·(θ − θ*) is added after backward
    (`quadratic.Quadratic.add_gradient`); its value (``loss/mas``) is computed only where a row is logged or
    the loss checked (`penalty_values`).
    """

    selectable = ("lambda",)
    loss_name = "mas"

    def __init__(self, lambda_: float = 1.0, samples: int | None = 200):
        self.lambda_ = number("lambda", lambda_, "≥ 0", lambda v: v >= 0)
        self.samples = None if samples is None else count("samples", samples)
        self.term: Quadratic | None = None  # Ω (its `fisher`) and θ* (its `center`)
        self.sample_counts: list[int] = []

    def check(self, tasks: list[Task]) -> None:
        """Every task whose Ω a later task uses must hold `samples` training examples."""
        within_tasks("samples", self.samples, tasks)

    def importance(self, ctx: TrainContext) -> dict[str, Tensor]:
        split = ctx.tasks[ctx.task_idx].train
        n = len(split) if self.samples is None else min(self.samples, len(split))
        index = torch.randperm(len(split), generator=ctx.generator)[:n]
        self.sample_counts.append(n)
        return mas_importance(ctx.model, split, index)

    def after_task(self, ctx: TrainContext) -> None:
        """Ω ← Ω + Ω_task (old rows), θ* ← θ."""
        omega = self.importance(ctx)
        params = trainable_parameters(ctx.model)
        new = Quadratic(omega, {name: params[name].detach().clone() for name in omega})
        self.term = new if self.term is None else self.term.reanchored(new)

    def penalty_values(self, ctx: TrainContext) -> dict[str, Tensor]:
        """λ·Σ Ω(θ − θ*)² at the current parameters (none during task A)."""
        if self.term is None:
            return {}
        with torch.no_grad():
            return {self.loss_name: self.lambda_ * self.term.value(dict(ctx.model.named_parameters()))}

    def after_backward(self, ctx: TrainContext) -> None:
        """Add the penalty's gradient (none during task A)."""
        if self.term is not None:
            self.term.add_gradient(dict(ctx.model.named_parameters()), self.lambda_)

    def state_dict(self) -> dict:
        return {"terms": [] if self.term is None else [self.term.state()], "sample_counts": list(self.sample_counts)}

    def load_state_dict(self, state: dict) -> None:
        self.term = None
        for t in state["terms"]:
            self.term = Quadratic(t["fisher"], t["center"], t["center_low"], float(t["constant"]))
        self.sample_counts = list(state["sample_counts"])
