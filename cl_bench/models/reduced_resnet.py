"""The reduced ResNet-18 of the continual-learning literature: the CIFAR-style ResNet-18 (He et al. 2016) with
`nf` = 20 initial filters instead of 64, as in GEM (Lopez-Paz & Ranzato 2017), iCaRL's comparisons, DER
(Buzzega et al. 2020) and Mammoth's `reduced-resnet18` (backbone/ResNetBlock.py).

Layout: a 3x3 stride-1 stem conv (no bias) + BatchNorm + ReLU, no max-pool; four stages of two BasicBlocks
with nf, 2nf, 4nf, 8nf channels, the last three starting with stride 2 (a 1x1 conv + BatchNorm shortcut where
the shape changes); global average pooling to 8·nf features (160 at nf=20); a linear `head`. With nf=64 it is
the full CIFAR ResNet-18 (11,173,962 parameters at 10 classes) that DER uses on seq-CIFAR-10.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.functional import relu

from cl_bench.core.errors import ConfigError
from cl_bench.models.resnet import FeaturesHead


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm, added to the input (through a 1x1 conv + BatchNorm where the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return relu(out + self.shortcut(x))


def stage(in_planes: int, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
    """`blocks` BasicBlocks, the first with `stride`."""
    rest = (BasicBlock(planes, planes) for _ in range(blocks - 1))
    return nn.Sequential(BasicBlock(in_planes, planes, stride), *rest)


def reduced_resnet18(input_shape: tuple[int, ...], n_outputs: int, nf: int = 20) -> FeaturesHead:
    """The reduced ResNet-18 (`nf` initial filters; features of 8·nf) for inputs [C, H, W] of any channel count,
    with a linear `head` of `n_outputs` rows."""
    if isinstance(nf, bool) or not isinstance(nf, int) or nf < 1:
        raise ConfigError(f"model.nf={nf!r}: must be an integer ≥ 1 (20: the reduced ResNet-18; 64: the full one)")
    if len(input_shape) != 3:
        raise ConfigError(
            f"model=reduced_resnet18 needs image inputs [C, H, W]; the data has shape {tuple(input_shape)}"
        )
    features = nn.Sequential(
        conv3x3(input_shape[0], nf),
        nn.BatchNorm2d(nf),
        nn.ReLU(),
        stage(nf, nf, 1),
        stage(nf, 2 * nf, 2),
        stage(2 * nf, 4 * nf, 2),
        stage(4 * nf, 8 * nf, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return FeaturesHead(features, nn.Linear(8 * nf, n_outputs))
