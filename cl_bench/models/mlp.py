"""Multi-layer perceptron over flattened inputs (the split-MNIST EWC tutorial's 128-unit net, van de Ven & Tolias's 2x400)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from cl_bench.core import checks

# How the linear layers start: PyTorch's default, or Xavier-uniform weights and zero biases (Mammoth's MNIST MLP,
# Buzzega et al. 2020: its `xavier`, uniform in ±√(6 / (fan_in + fan_out))).
INITS = ("default", "xavier")


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, hidden: list[int], dropout: float = 0.0,
                 init: str = "default"):
        super().__init__()
        checks.choice("model.init", init, INITS)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)
        if init == "xavier":
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
