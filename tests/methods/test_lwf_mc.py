"""LwF.MC (Rebuffi et al. 2017): its loss against iCaRL's binary cross-entropy by hand, over the units seen only."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.build import build_method
from cl_bench.methods.lwf_mc import LwFMC
from tests.helpers.config import TINY
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task

pytestmark = pytest.mark.usefixtures("one_thread")


def bce_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """−mean over examples and units of t·log σ(z) + (1 − t)·log(1 − σ(z)), written out."""
    total = 0.0
    for z_row, t_row in zip(logits.tolist(), targets.tolist()):
        for z, t in zip(z_row, t_row):
            p = 1 / (1 + math.exp(-z))
            total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    return total / logits.numel()


@pytest.mark.parametrize("class_head", ["grow", "full"])
def test_the_loss_is_the_bce_over_the_classes_seen_with_the_previous_models_sigmoids_as_old_targets(class_head):
    tasks = random_tasks(3, (4,), 2, n=12, seed=0, labels="cyclic")
    scenario = Scenario("class", [2, 2, 2], class_head)
    model = seeded_mlp((4,), scenario.n_outputs(0), [5], dtype=torch.float64)
    lwf = LwFMC()
    ctx = start_task(model, tasks, scenario, 0, lwf)
    batch = batch_of(tasks[0], 0, [0, 1, 2])
    logits = model(batch.x)
    assert lwf.task_loss_weight(ctx) == 0.0
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # units 0, 1 only
    assert lwf.loss_terms(ctx, batch, logits)["lwf_mc"].item() == pytest.approx(
        bce_by_hand(logits[:, :2], one_hot), rel=1e-10)

    nudge(model, 0.3, seed=1)
    lwf.after_task(ctx)
    start_task(model, tasks, scenario, 1, lwf)
    ctx = start_task(model, tasks, scenario, 2, lwf)  # tasks 0 and 1 done: 4 old units
    previous = copy.deepcopy(model)
    nudge(model, 0.3, seed=2)
    batch = batch_of(tasks[2], 2, [0, 1, 2])
    logits = model(batch.x)
    old = torch.sigmoid(previous(batch.x)[:, :4])
    targets = torch.cat([old, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)], dim=1)
    assert lwf.loss_terms(ctx, batch, logits)["lwf_mc"].item() == pytest.approx(
        bce_by_hand(logits[:, :6], targets), rel=1e-10)


def test_lwf_mc_is_class_il_only(make_config):
    with pytest.raises(ConfigError, match="defined only in class-IL"):
        build_method(make_config(TINY, "method=lwf_mc").method, "task")
