"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence")."""

from __future__ import annotations

import torch
from torch import Tensor

from cl_bench.core.per_sample_grads import trainable_parameters
from cl_bench.methods.base import Method, TrainContext
from cl_bench.methods.params import choice, number
from cl_bench.methods.quadratic import Quadratic

# Which gradient the path integral takes: the unregularised loss's (Zenke et al.) or the total loss's,
# the penalty's included (van de Ven & Tolias's code).
PATH_GRADIENTS = ("task", "total")


class SI(Method):
    """L(θ) = L_task(θ) + c·Σ_k Ω_k·(θ_k − θ*_k)², Zenke et al.'s surrogate loss, θ* the parameters when the
    previous task ended.

    During every task (the first too), after each optimiser step, ω_k += −g_k·Δθ_k: Δθ the step's
    update, g the gradient of the unregularised loss at the step, as Zenke et al. define the path
    integral (the loss's decrease that the parameter's motion explains). The penalty is taken without
    autograd: `after_backward` keeps the backward pass's gradient as g, then adds the penalty's closed-form
    gradient 2c·Ω·(θ − θ*) for the optimiser (`quadratic.Quadratic.add_gradient`); its value (``loss/si``)
    is computed only where a row is logged or the loss checked (`penalty_values`). `path_gradient=total` integrates
    the step's total gradient instead, the penalty's included, as van de Ven & Tolias's code does. At the task's end Ω_k += ω_k / ((θ_k − θ_k^start)² + ξ), θ* ← θ, ω ← 0.

    c: the penalty's strength; path_gradient: task | total, above; xi: the damping ξ (van de Ven & Tolias's `epsilon`, 0.1). Head rows added
    after a task carry no Ω of it. Task A builds Ω, so SI does not share the cached task A. clip: every gradient
    value of the model clipped to [−clip, clip] after the penalty's gradient is added, the step and the `total`
    path integral taking the clipped gradient (Mammoth's SI clips at 1, with g the total gradient: for plain SGD
    its ω += lr·g² is this −g·Δθ); null: no clipping.
    """

    changes_first_task = True
    selectable = ("c",)
    loss_name = "si"

    def __init__(self, c: float = 1000.0, xi: float = 0.1, path_gradient: str = "task", clip: float | None = None):
        self.c = number("c", c, "≥ 0", lambda v: v >= 0)
        self.xi = number("xi", xi, "> 0", lambda v: v > 0)
        self.path_gradient = choice("path_gradient", path_gradient, PATH_GRADIENTS)
        self.clip = None if clip is None else number("clip", clip, "> 0", lambda v: v > 0)
        self.term: Quadratic | None = None  # Ω (its `fisher`) and θ* (its `center`)
        self.omega: dict[str, Tensor] = {}  # ω of the task being trained
        self.start: dict[str, Tensor] = {}  # θ at its start
        self.previous: dict[str, Tensor] = {}  # θ before the step
        self.grad: dict[str, Tensor] = {}  # g of the step, from after_backward to after_step

    def before_task(self, ctx: TrainContext) -> None:
        params = trainable_parameters(ctx.model)
        self.start = {name: p.detach().clone() for name, p in params.items()}
        self.previous = {name: p.detach().clone() for name, p in params.items()}
        self.omega = {name: torch.zeros_like(p) for name, p in params.items()}

    def penalty_values(self, ctx: TrainContext) -> dict[str, Tensor]:
        """c·Σ Ω(θ − θ*)² at the current parameters (none during the first task)."""
        if self.term is None:
            return {}
        with torch.no_grad():
            return {self.loss_name: self.c * self.term.value(dict(ctx.model.named_parameters()))}

    def after_backward(self, ctx: TrainContext) -> None:
        """The penalty's gradient is added to the backward pass's (then, with `clip`, every gradient value is
        clipped to [−clip, clip]); g is the gradient before that (`path_gradient=task`) or after it (`total`)."""
        if self.path_gradient == "total":
            self.penalise_and_clip(ctx)
        params = {name: p for name, p in trainable_parameters(ctx.model).items() if p.grad is not None}
        self.grad = dict(zip(params, torch._foreach_mul([p.grad for p in params.values()], 1.0)))
        if self.path_gradient == "task":
            self.penalise_and_clip(ctx)

    def penalise_and_clip(self, ctx: TrainContext) -> None:
        """Add the penalty's gradient 2c·Ω·(θ − θ*) (after the first task) and clip the gradients' values."""
        if self.term is not None:
            self.term.add_gradient(dict(ctx.model.named_parameters()), self.c)
        if self.clip is not None:
            torch.nn.utils.clip_grad_value_(ctx.model.parameters(), self.clip)

    def after_step(self, ctx: TrainContext) -> None:
        """ω += −g·Δθ over the step just taken."""
        params = trainable_parameters(ctx.model)
        for name, g in self.grad.items():
            theta = params[name].detach()
            self.omega[name].sub_(g * (theta - self.previous[name]))
            self.previous[name].copy_(theta)
        self.grad = {}

    def after_task(self, ctx: TrainContext) -> None:
        """Ω += ω / ((θ − θ_start)² + ξ), θ* ← θ; ω, θ_start are dropped until the next task starts."""
        params = trainable_parameters(ctx.model)
        importance = {
            name: omega / ((params[name].detach() - self.start[name]).square() + self.xi)
            for name, omega in self.omega.items()
        }
        new = Quadratic(importance, {name: params[name].detach().clone() for name in importance})
        self.term = new if self.term is None else self.term.reanchored(new)
        self.omega, self.start, self.previous = {}, {}, {}

    def state_dict(self) -> dict:
        return {
            "terms": [] if self.term is None else [self.term.state()],
            "omega": self.omega,
            "start": self.start,
            "previous": self.previous,
        }

    def load_state_dict(self, state: dict) -> None:
        self.term = None
        for t in state["terms"]:
            self.term = Quadratic(t["fisher"], t["center"], t["center_low"], float(t["constant"]))
        self.omega, self.start, self.previous = dict(state["omega"]), dict(state["start"]), dict(state["previous"])
