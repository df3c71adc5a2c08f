"""The MLP's initialisations: PyTorch's default, and Xavier's as Mammoth's MNIST MLP starts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cl_bench.core.errors import ConfigError
from cl_bench.models.mlp import MLP


def linears(model: MLP) -> list[nn.Linear]:
    return [layer for layer in model.modules() if isinstance(layer, nn.Linear)]


def test_xavier_draws_weights_uniform_within_mammoths_bound_and_zero_biases_the_default_pytorchs():
    torch.manual_seed(0)
    model = MLP((1, 28, 28), 10, [100, 100], init="xavier")
    for layer in linears(model):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(3.0) * math.sqrt(2.0 / (fan_in + fan_out))  # Mammoth's `xavier`: √3 · √(2 / (in + out))
        weights = layer.weight.detach()
        assert weights.abs().max() <= bound and weights.abs().max() > 0.95 * bound
        assert abs(weights.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # uniform: std = bound / √3
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    torch.manual_seed(0)  # the default stays PyTorch's own
    default = MLP((1, 28, 28), 10, [100, 100])
    torch.manual_seed(0)
    plain = [nn.Linear(784, 100), nn.Linear(100, 100), nn.Linear(100, 10)]
    for mine, theirs in zip(linears(default), plain):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)


def test_an_unknown_initialisation_is_refused():
    with pytest.raises(ConfigError, match="model.init='he': choose one of default, xavier"):
        MLP((4,), 2, [3], init="he")
