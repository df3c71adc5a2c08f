"""Channels-last ResNet-18 (`model.channels_last=true`, what `auto` chooses on CUDA) computes what the default layout
computes: the same arithmetic in another memory order, so only the order of float sums differs.

In float64 that order's rounding stays ~1e-14 over several training steps, so there the two layouts are compared
step by step. In float32 a first step agrees to ~1e-6 (the rounding), but a ResNet trained with batch statistics
magnifies such differences: measured on random 32x32 batches of 16, 1e-3 after one SGD step, 20% after four (the
float64 runs agree to 1e-14 over the same steps, so this is rounding, not another computation). A whole run is
therefore compared on its first step, and checked to keep the channels-last layout everywhere it keeps weights."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from cl_bench.models.resnet import resnet18
from cl_bench.records.checkpoint import load_checkpoint
from tests.helpers.data import save_coloured_picture
from tests.helpers.devices import DEVICES
from tests.helpers.runs import tiny_run

FLOAT64_RTOL = 1e-10
# The first step's loss of a run, float32: the rounding of another summation order (CPU), or of TF32 convolutions,
# cuDNN's default for float32 on CUDA (10 bits of mantissa).
FIRST_STEP_RTOL = {"cpu": 1e-5, "cuda": 2e-3}
COLOURS = ((20, 20, 20), (200, 30, 30), (235, 235, 235), (30, 30, 200))
IMAGES = ["dataset.vmmr.image_size=32", "dataset.car_color.image_size=32", "dataset.vmmr.workers=0",
          "dataset.car_color.workers=0", "dataset.vmmr.top_k=null"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """data_dir/vmmrdb/<make_model_year>/*.jpg (two classes) and data_dir/car_color/<colour>/*.jpg (four)."""
    root = tmp_path_factory.mktemp("data")
    for k, colour in enumerate(COLOURS):
        for i in range(8):
            save_coloured_picture(root / "car_color" / f"c{k}" / f"{i:03d}.jpg", colour, seed=100 * k + i)
            if k < 2:
                save_coloured_picture(root / "vmmrdb" / f"make{k}_model_2004" / f"{i:03d}.jpg", colour[::-1], seed=i)
    return root


def trained_pair(device: str, dtype: torch.dtype, steps: int) -> list[tuple[list[float], torch.nn.Module]]:
    """A ResNet-18 in each layout from the same initial weights, each trained `steps` SGD steps on the same random
    batches: their losses and the models."""
    torch.manual_seed(0)
    plain = resnet18((3, 32, 32), 4).to(device, dtype)
    fast = resnet18((3, 32, 32), 4, channels_last=True).to(device, dtype)
    fast.load_state_dict(plain.state_dict())
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 32, 32, generator=generator, dtype=dtype).to(device),
                torch.randint(0, 4, (16,), generator=generator).to(device)) for _ in range(steps)]
    trained = []
    for model in (plain, fast):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses = []
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        trained.append((losses, model))
    return trained


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_trains_as_the_default_layout_in_float64(device):
    (plain_losses, plain), (fast_losses, fast) = trained_pair(device, torch.float64, steps=5)
    assert fast.features[4][0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast_losses == pytest.approx(plain_losses, rel=FLOAT64_RTOL)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.allclose(b, a, rtol=FLOAT64_RTOL, atol=FLOAT64_RTOL * a.abs().max()), name
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64, device=device)
    assert torch.allclose(fast.eval()(x), plain.eval()(x), rtol=FLOAT64_RTOL, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_a_channels_last_run_keeps_its_layout_and_starts_as_the_default_layout(data_dir, tmp_path, device):
    """KD on two image tasks (the head grows; the teacher is a copy of the model; the Score's snapshot another)."""
    common = ["experiment=two_cities", *IMAGES, "method=kd", f"device={device}", "precision=fp32", "batch_size=8",
              "first_task.steps=3", "steps=3", "eval_every=1", "first_task.cache=false", f"data_dir={data_dir}"]
    first_losses = {}
    for layout in ("true", "false"):
        summary, run_dir = tiny_run(tmp_path, *common, f"model.channels_last={layout}", name=layout)
        assert summary["status"] == "ok", summary.get("error")
        rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
        first_losses[layout] = rows.query("task == 0 and task_step == 1")["loss/task"].item()
        state = load_checkpoint(max((run_dir / "checkpoints").glob("ckpt-*.pt")))
        weights = {"model": state["model"], "teacher": state["method"]["teacher"], "best": state["best"]["model"]}
        for where, kept in weights.items():
            conv = kept["features.4.0.conv1.weight"]  # [64, 64, 3, 3]: the layouts differ
            assert conv.is_contiguous(memory_format=torch.channels_last) == (layout == "true"), where
    assert first_losses["true"] == pytest.approx(first_losses["false"], rel=FIRST_STEP_RTOL[device])
