"""Multi-layer perceptron over flattened inputs (the split-MNIST EWC tutorial's 128-unit net, van de Ven & Tolias's 2x400)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
