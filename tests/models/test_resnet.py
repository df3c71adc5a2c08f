"""ResNet-18: shapes, head growth, weights from a local state-dict file, the model config."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torchvision.models import resnet18 as torchvision_resnet18

from cl_bench.engine.device import device_model_options
from cl_bench.models.head import grow_head
from cl_bench.models.resnet import resnet18


def test_forward_shapes_at_32px():
    model = resnet18((3, 32, 32), 5).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.features(x).shape == (2, 512)
    assert model(x).shape == (2, 5)
    assert resnet18((1, 28, 28), 3)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_head_growth_keeps_old_rows():
    model = resnet18((3, 32, 32), 4).eval()
    x = torch.randn(3, 3, 32, 32)
    old_weight, before = model.head.weight.detach().clone(), model(x).detach()
    assert grow_head(model, 7)
    assert model.head.weight.shape == (7, 512)
    assert torch.equal(model.head.weight[:4], old_weight)
    assert torch.allclose(model(x)[:, :4], before)


def test_weights_from_a_local_state_dict(tmp_path):
    torch.manual_seed(1)
    source = torchvision_resnet18(num_classes=1000)
    with torch.no_grad():
        source.layer3[0].bn1.running_mean.uniform_()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = resnet18((3, 32, 32), 6, weights=str(path))
    assert torch.equal(model.features[0].weight, source.conv1.weight)
    assert torch.equal(model.features[6][0].bn1.running_mean, source.layer3[0].bn1.running_mean)
    assert model.head.weight.shape == (6, 512)
    source.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval().features(x), source.eval()(x), atol=1e-5)


def test_bad_weights_are_clear_errors(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision ResNet-18 state dict"):
        resnet18((3, 32, 32), 2, weights=str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        resnet18((3, 32, 32), 2, weights=str(tmp_path / "absent.pth"))


def test_channels_last_matches_default_layout():
    torch.manual_seed(0)
    plain = resnet18((3, 32, 32), 3).eval()
    fast = resnet18((3, 32, 32), 3, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(fast(x), plain(x), atol=1e-4)


def test_model_config_instantiates_channels_last_on_cuda_only(make_config):
    cfg = make_config("model=resnet18")
    assert cfg.model.channels_last == "auto"
    assert device_model_options(cfg.model, torch.device("cuda")) == {"channels_last": True}
    options = device_model_options(cfg.model, torch.device("cpu"))
    model = instantiate(cfg.model, input_shape=(3, 32, 32), n_outputs=4, **options).eval()
    assert not model.channels_last and model.features[0].weight.is_contiguous()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(InstantiationException, match="auto is resolved by the run"):
        instantiate(cfg.model, input_shape=(3, 32, 32), n_outputs=4)
