"""The reduced ResNet-18 (GEM / Mammoth's reduced-resnet18): its parameter count, layout, shapes, head growth
and config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from cl_bench.core.errors import ConfigError
from cl_bench.engine.validate import validate_config
from cl_bench.models.head import grow_head
from cl_bench.models.reduced_resnet import reduced_resnet18

pytestmark = pytest.mark.usefixtures("one_thread")


def block_weights(c_in: int, c_out: int, stride: int) -> int:
    """A BasicBlock's parameters counted by hand: two 3x3 convs without bias, two BatchNorms (weight and bias),
    and a 1x1 conv + BatchNorm shortcut where the shape changes."""
    count = 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out
    return count + (c_in * c_out + 2 * c_out if stride != 1 or c_in != c_out else 0)


def expected_weights(nf: int, n_outputs: int, in_channels: int = 3) -> int:
    """Stem (3x3 conv + BatchNorm), four stages of two blocks (nf, 2nf, 4nf, 8nf), linear head of 8·nf inputs."""
    count = 9 * in_channels * nf + 2 * nf
    c_in = nf
    for c_out, stride in ((nf, 1), (2 * nf, 2), (4 * nf, 2), (8 * nf, 2)):
        count += block_weights(c_in, c_out, stride) + block_weights(c_out, c_out, 1)
        c_in = c_out
    return count + 8 * nf * n_outputs + n_outputs


def weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_is_the_reduced_resnet18s():
    assert expected_weights(20, 10) == 1_094_750  # the "1.09M" of GEM's and Mammoth's reduced ResNet-18
    assert weights(reduced_resnet18((3, 32, 32), 10)) == 1_094_750
    assert weights(reduced_resnet18((3, 32, 32), 100)) == expected_weights(20, 100)
    assert weights(reduced_resnet18((1, 28, 28), 10)) == expected_weights(20, 10, in_channels=1)


def test_nf_64_is_the_full_cifar_resnet18():
    """With 64 filters it is torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool: 11,173,962."""
    reference = torchvision_resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    assert weights(reduced_resnet18((3, 32, 32), 10, nf=64)) == weights(reference) == 11_173_962


def test_layout_stem_stride_one_no_max_pool_and_stage_shapes():
    model = reduced_resnet18((3, 32, 32), 10).eval()
    stem = model.features[0]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.bias is None
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, nn.Sequential):
            shapes.append(tuple(x.shape))
    assert shapes == [(2, 20, 32, 32), (2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4)]
    assert [len(stage) for stage in model.features if isinstance(stage, nn.Sequential)] == [2, 2, 2, 2]


def test_features_are_160_wide_and_outputs_n():
    model = reduced_resnet18((3, 32, 32), 7).eval()
    x = torch.randn(3, 3, 32, 32)
    features = model.features(x)
    assert features.shape == (3, 160) and model(x).shape == (3, 7)
    assert torch.allclose(model(x), model.head(features))
    assert reduced_resnet18((1, 28, 28), 4)(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_features_are_the_mean_of_the_last_stage():
    model = reduced_resnet18((3, 32, 32), 2).eval()
    x = torch.randn(2, 3, 32, 32)
    last = model.features[:7](x)
    assert torch.allclose(model.features(x), last.mean(dim=(2, 3)), atol=1e-6)


def test_head_growth_keeps_old_rows_and_outputs():
    model = reduced_resnet18((3, 32, 32), 2).eval()
    x = torch.randn(3, 3, 32, 32)
    old, before = model.head.weight.detach().clone(), model(x).detach()
    assert grow_head(model, 4)
    assert model.head.weight.shape == (4, 160) and torch.equal(model.head.weight[:2], old)
    assert torch.allclose(model(x)[:, :2], before)


@pytest.mark.parametrize("nf", [0, 2.5, True])
def test_bad_nf_is_refused(nf):
    with pytest.raises(ConfigError, match=f"model.nf={nf!r}: must be an integer ≥ 1"):
        reduced_resnet18((3, 32, 32), 2, nf=nf)


def test_flat_inputs_are_refused():
    with pytest.raises(ConfigError, match=r"needs image inputs \[C, H, W\]; the data has shape \(64,\)"):
        reduced_resnet18((64,), 2)


def test_model_config_instantiates_the_reduced_resnet(make_config):
    cfg = make_config("model=reduced_resnet18", "scenario=class")
    validate_config(cfg)
    assert cfg.model.nf == 20
    model = instantiate(cfg.model, input_shape=(3, 32, 32), n_outputs=2)
    assert weights(model) == expected_weights(20, 2)
    with pytest.raises(ConfigError, match="model.width: reduced_resnet18 takes no such parameter"):
        validate_config(make_config("model=reduced_resnet18", "+model.width=3"))
