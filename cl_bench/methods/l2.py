"""An L2 penalty toward the parameters each earlier task ended with (seed 003's idea)."""

from __future__ import annotations

import torch
from torch import Tensor

from cl_bench.data.task import Task
from cl_bench.methods.base import TrainContext
from cl_bench.methods.ewc import EWC


class L2(EWC):
    """L_task + λ·Σ_j Σ_i (θ_i − θ*_j,i)²: EWC with F ≡ 1 (same scope, mode and gamma), no Fisher samples.

    Seed 003's code adds 0.5·Σ_tensors tf.norm(θ − θ_A), an unsquared norm per tensor; we square,
    as its formula and seed 000's Σ_j (θ^(j) − θ_A^(j))² say.
    """

    loss_name = "l2"

    def __init__(self, lambda_: float = 0.1, scope: str = "all", mode: str = "separate", gamma: float = 1.0):
        super().__init__(lambda_, scope=scope, mode=mode, gamma=gamma)

    def check(self, tasks: list[Task]) -> None:
        """No Fisher, so no sample count to check."""

    def importance(self, ctx: TrainContext) -> dict[str, Tensor]:
        return {name: torch.ones_like(p) for name, p in ctx.model.named_parameters() if p.requires_grad}
