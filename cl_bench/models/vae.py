"""A variational auto-encoder whose encoder feeds the classifier's head (van de Ven & Tolias 2018's model with
feedback connections, the one model of Replay-through-Feedback; also DGR's separate generator)."""

from __future__ import annotations

import math

from torch import Tensor, nn


def relu_layers(width: int, sizes: list[int], dropout: float) -> tuple[list[nn.Module], int]:
    """Linear + ReLU (+ dropout) layers from `width` inputs through `sizes`, and the width they end with."""
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return layers, width


class VAE(nn.Module):
    """x → `features` (an MLP over the flattened input, `hidden` ReLU layers) → `head`, the classifier's logits;
    and from the same features the latent code's mean and log-variance (`latent` units each), whose sample the
    decoder (`hidden` reversed, then the input's pixels) turns back into an input in [0, 1].

    `forward` is the classifier (a model like any other: the trainer grows `head`); `encode`, `decode` and
    `decode_logits` are the generative path, which the replay methods (methods/generative_replay.py) train."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, hidden: list[int], latent: int = 100,
                 dropout: float = 0.0):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent = latent
        pixels = math.prod(input_shape)
        encoder, width = relu_layers(pixels, hidden, dropout)
        self.features = nn.Sequential(nn.Flatten(), *encoder)
        self.head = nn.Linear(width, n_outputs)
        self.to_mean = nn.Linear(width, latent)
        self.to_logvar = nn.Linear(width, latent)
        reversed_hidden = list(reversed(hidden))
        decoder, width = relu_layers(latent, reversed_hidden, dropout)
        self.decoder = nn.Sequential(*decoder, nn.Linear(width, pixels))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The latent code's mean and log-variance for inputs `x`."""
        hidden = self.features(x)
        return self.to_mean(hidden), self.to_logvar(hidden)

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's pixel logits for latent codes `z`, in the input's shape (sigmoid: the pixels)."""
        return self.decoder(z).view(len(z), *self.input_shape)

    def decode(self, z: Tensor) -> Tensor:
        """Inputs in [0, 1] generated from latent codes `z`."""
        return self.decode_logits(z).sigmoid()
