"""Sörberg's CNN (permuted-MNIST report): dropout, one 3x3 conv of 64 maps, 2x2 max-pool, two 1024-unit layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        channels: int = 64,
        hidden: int = 1024,
        input_dropout: float = 0.2,
        dropout: float = 0.5,
    ):
        super().__init__()
        in_channels = input_shape[0] if len(input_shape) == 3 else 1
        conv = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = conv(torch.zeros(1, in_channels, *input_shape[-2:])).shape[1]
        self.features = nn.Sequential(
            conv,
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))
