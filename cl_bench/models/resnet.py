"""torchvision's ResNet-18 (the two-cities post's model) as `.features` (to the pooled 512-d vector) and a
linear `.head`: from scratch, from a local state-dict file, or with torchvision's ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet, ResNet18_Weights
from torchvision.models import resnet18 as torchvision_resnet18

from cl_bench.models.options import check_channels_last


class FeaturesHead(nn.Module):
    """A feature extractor and a linear head, inputs optionally in channels-last memory format."""

    def __init__(self, features: nn.Module, head: nn.Linear, channels_last: bool = False):
        super().__init__()
        self.features, self.head, self.channels_last = features, head, channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


def imagenet_state_dict() -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-18 weights (from torch's hub cache, else downloaded)."""
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except OSError as error:  # URLError and socket errors are OSErrors
        url = ResNet18_Weights.IMAGENET1K_V1.url
        raise RuntimeError(
            f"cannot fetch torchvision's ImageNet ResNet-18 weights ({error}). On a machine without "
            f"internet, download {url} elsewhere and pass model.weights=/path/to/{url.rsplit('/', 1)[-1]}, "
            f"or put it in {torch.hub.get_dir()}/checkpoints/"
        ) from error


def load_backbone(net: ResNet, weights: str) -> None:
    """Load `weights` ("imagenet" or a state-dict file with torchvision's key names) into `net`,
    its `fc` (the ImageNet classifier) dropped."""
    if weights == "imagenet":
        state = imagenet_state_dict()
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.weights={weights}: no such file (a ResNet-18 state dict, or 'imagenet')")
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
        raise ValueError(f"model.weights={weights} is not a torchvision ResNet-18 state dict: "
                         f"missing {sorted(set(missing) - {'fc.weight', 'fc.bias'})}, unexpected {unexpected}")


def resnet18(
    input_shape: tuple[int, ...], n_outputs: int, weights: str | None = None, channels_last: bool = False
) -> FeaturesHead:
    """ResNet-18 with a fresh `head` of `n_outputs` rows; `weights`: None (from scratch), "imagenet",
    or a local state-dict path. Inputs of other than 3 channels ([C, H, W]) only from scratch.
    `channels_last` is a bool: the run resolves the config's `auto` for its device."""
    check_channels_last(channels_last, resolved=True)
    net = torchvision_resnet18(weights=None)
    channels = input_shape[0]
    if weights is not None:
        if channels != 3:
            raise ValueError(f"model.weights={weights} needs 3-channel inputs, the data has shape {input_shape}")
        load_backbone(net, weights)
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stem = [net.conv1, net.bn1, net.relu, net.maxpool]
    features = nn.Sequential(*stem, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool, nn.Flatten())
    return FeaturesHead(features, nn.Linear(net.fc.in_features, n_outputs), channels_last)
