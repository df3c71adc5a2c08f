"""A cosine classifier: an output layer whose scores are scaled cosine similarities (Hou et al. 2019's cosine
normalisation, LUCIR; Caccia et al. 2022's classifier, ER-ACE), a method's replacement of a model's linear `head`
(`Method.head`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineLinear(nn.Module):
    """score_k(x) = s·⟨x/‖x‖, w_k/‖w_k‖⟩ for every output row k: no bias; the scale s fixed (ER-ACE's 10) or learned
    from its initial value (`learn_scale`, LUCIR's σ from 1). Rows are grown as a linear head's (models/head.py);
    `reset_parameters` draws the rows as `nn.Linear` draws its weight and puts s back to its initial value."""

    def __init__(
        self, in_features: int, out_features: int, scale: float = 1.0, learn_scale: bool = False,
        device: torch.device | None = None, dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.initial_scale, self.learn_scale = float(scale), learn_scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        scale_tensor = torch.empty(1, device=device, dtype=dtype)
        if learn_scale:
            self.scale = nn.Parameter(scale_tensor)
        else:
            self.register_buffer("scale", scale_tensor)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.scale.fill_(self.initial_scale)

    def options(self) -> dict:
        """The constructor's keywords beyond the sizes: a head of the same kind is built with them."""
        return {"scale": self.initial_scale, "learn_scale": self.learn_scale}

    def cosine(self, x: Tensor) -> Tensor:
        """⟨x/‖x‖, w_k/‖w_k‖⟩ for every row k: the scores before the scale."""
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.cosine(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, learn_scale={self.learn_scale}"
