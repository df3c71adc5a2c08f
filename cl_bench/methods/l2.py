"""An L2 penalty toward the parameters each earlier task ended with (Kirkpatrick et al. 2017's L2
baseline; the split-MNIST EWC tutorial's idea)."""

from __future__ import annotations

import torch
from torch import Tensor

from cl_bench.data.task import Task
from cl_bench.methods.base import TrainContext
from cl_bench.methods.ewc import EWC
from cl_bench.methods.params import choice, together
from cl_bench.methods.quadratic import gradient_block, stored_part

FORMS = ("squared", "norm")


class L2(EWC):
    """L_task + λ·Σ_j Σ_i (θ_i − θ*_j,i)²: EWC with F ≡ 1 (same scope, mode and gamma), no Fisher samples.

    `form=norm` is the split-MNIST EWC tutorial's code: λ·Σ_j Σ_tensors ‖θ − θ*_j‖, an unsquared
    Euclidean norm per weight tensor (the tutorial's 0.5·Σ tf.norm(θ − θ_A) is λ = 0.5; its zero
    gradient at θ = θ*, where the norm has none, is torch's subgradient). The default squares, as the
    tutorial's formula and the two-cities post's Σ_j (θ^(j) − θ_A^(j))² say.

    As EWC's, the penalty is taken without autograd: its closed-form gradient is added after backward,
    2λ·Σ_j (θ − θ*_j) squared, λ·Σ_j (θ − θ*_j)/‖θ − θ*_j‖ per tensor for `form=norm` (0 where θ = θ*_j);
    its value (``loss/l2``) is computed only where a row is logged or the loss checked.
    """

    loss_name = "l2"

    def __init__(
        self, lambda_: float = 0.1, scope: str = "all", mode: str = "separate", gamma: float = 1.0, form: str = "squared"
    ):
        super().__init__(lambda_, scope=scope, mode=mode, gamma=gamma)
        self.form = choice("form", form, FORMS)
        together(self.form == "squared" or (self.mode == "separate" and self.gamma == 1), "form", self.form,
                 "keeps one unsquared norm per task: use mode=separate and gamma=1")

    def check(self, tasks: list[Task]) -> None:
        """No Fisher, so no sample count to check."""

    def importance(self, ctx: TrainContext) -> dict[str, Tensor]:
        return {name: torch.ones_like(p) for name, p in ctx.model.named_parameters() if p.requires_grad}

    def penalty(self, params: dict[str, Tensor]) -> Tensor:
        if self.form == "squared":
            return super().penalty(params)
        norms = [
            torch.linalg.vector_norm(stored_part(params, name, center) - center)
            for term in self.terms
            for name, center in term.center.items()
        ]
        return self.lambda_ * torch.stack(norms).sum()

    def add_penalty_gradient(self, params: dict[str, Tensor]) -> None:
        if self.form == "squared":
            super().add_penalty_gradient(params)
            return
        with torch.no_grad():
            for term in self.terms:
                for name, center in term.center.items():
                    diff = stored_part(params, name, center).detach() - center
                    norm = torch.linalg.vector_norm(diff)
                    direction = torch.where(norm > 0, diff / norm, 0.0)
                    gradient_block(params[name], center.shape).add_(direction, alpha=self.lambda_)
