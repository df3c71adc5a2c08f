"""`precision=bf16` for every method: the forward passes under bf16 autocast (the CPU's here, CUDA's in the GPU tier,
where `precision=auto` means bf16), its losses and accuracies within a stated tolerance of fp32's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cl_bench.methods.icarl import nearest_mean_scores
from tests.helpers.devices import DEVICES
from tests.helpers.methods import EVERY_METHOD
from tests.helpers.runs import tiny_run

# bf16 keeps 8 bits of mantissa: a forward pass's values are within ~0.4% of fp32's, so over a tiny run's 60 steps the
# two trajectories drift apart a little. Measured on the CPU (2026-12-07) the worst over every method: losses 0.6%
# apart (E2E), 3 of a task's ~108 validation examples classified otherwise (E2E, iCaRL). Allowed: 3% of a loss, and 6
# examples of 108.
LOSS_RTOL, LOSS_ATOL = 0.03, 1e-3
ACCURACY_ATOL = 0.055


def metrics(run_dir) -> pd.DataFrame:
    return pd.read_json(run_dir / "metrics.jsonl", lines=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(EVERY_METHOD))
def test_bf16_autocast_losses_and_accuracies_are_within_tolerance_of_fp32(tmp_path, method, device):
    runs = {}
    for precision in ("fp32", "bf16"):
        summary, run_dir = tiny_run(tmp_path, *EVERY_METHOD[method], f"device={device}", f"precision={precision}",
                                    "first_task.cache=false", name=precision)
        assert summary["status"] == "ok", summary.get("error")
        runs[precision] = metrics(run_dir)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert fp32.columns.tolist() == bf16.columns.tolist() and fp32["step"].tolist() == bf16["step"].tolist()
    losses = [c for c in fp32.columns if c.startswith("loss/")]
    accuracies = [c for c in fp32.columns if c.startswith("val")]
    trained = fp32["task_step"] > 0
    assert not np.array_equal(fp32.loc[trained, "loss/total"], bf16.loc[trained, "loss/total"])  # bf16 in effect
    assert np.allclose(bf16[losses], fp32[losses], rtol=LOSS_RTOL, atol=LOSS_ATOL, equal_nan=True)
    assert np.allclose(bf16[accuracies], fp32[accuracies], rtol=0, atol=ACCURACY_ATOL, equal_nan=True)


def test_icarls_nearest_mean_under_bf16_autocast_is_the_float32_distance_of_its_features():
    """With normalised features ‖φ − μ‖² = 2 − 2φ·μ: a bf16 product φ·μ (autocast's choice for a matmul) left errors
    of a few 1e-3 in distances that close classes differ by."""
    generator = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(1, 512, generator=generator), dim=1)
    phi = F.normalize(centre + 0.3 * torch.randn(64, 512, generator=generator), dim=1).bfloat16()
    means = F.normalize(centre + 0.3 * torch.randn(10, 512, generator=generator), dim=1).bfloat16()
    exact = -torch.cdist(phi.double(), means.double()).square()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = nearest_mean_scores(phi, means, torch.ones(10, dtype=torch.bool))
    assert scores.dtype == torch.float32
    assert torch.allclose(scores.double(), exact, atol=1e-5)
