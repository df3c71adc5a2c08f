"""An L2 penalty toward the parameters each earlier task ended with (Kirkpatrick et al. 2017's L2
baseline; the split-MNIST EWC tutorial's idea)."""

from __future__ import annotations

import torch
from torch import Tensor

from cl_bench.data.task import Task
from cl_bench.methods.base import TrainContext
from cl_bench.methods.ewc import EWC
from cl_bench.methods.params import choice, together
from cl_bench.methods.quadratic import stored_part

FORMS = ("squared", "norm")


class L2(EWC):
    """L_task + λ·Σ_j Σ_i (θ_i − θ*_j,i)²: EWC with F ≡ 1 (same scope, mode and gamma), no Fisher samples.

    `form=norm` is the split-MNIST EWC tutorial's code: λ·Σ_j Σ_tensors ‖θ − θ*_j‖, an unsquared
    Euclidean norm per weight tensor (the tutorial's 0.5·Σ tf.norm(θ − θ_A) is λ = 0.5; its zero
    gradient at θ = θ*, where the norm has none, is torch's subgradient). The default squares, as the
    tutorial's formula and the two-cities post's Σ_j (θ^(j) − θ_A^(j))² say.
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

    def penalty(self, ctx: TrainContext) -> Tensor | None:
        if self.form == "squared" or not self.terms:
            return super().penalty(ctx)
        params = dict(ctx.model.named_parameters())
        norms = [
            torch.linalg.vector_norm(stored_part(params, name, center) - center)
            for term in self.terms
            for name, center in term.center.items()
        ]
        return torch.stack(norms).sum()
