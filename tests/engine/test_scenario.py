"""Scenarios: targets, masking and head growth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.engine.validate import validate_config
from cl_bench.models.head import grow_head
from cl_bench.models.mlp import MLP


def test_domain_il_shares_one_head():
    scenario = Scenario("domain", [5, 5])
    assert scenario.n_outputs(0) == scenario.n_outputs(1) == 5
    y = torch.tensor([0, 4])
    assert torch.equal(scenario.targets(y, torch.tensor([1, 1])), y)


def test_class_il_grows_and_offsets_labels():
    scenario = Scenario("class", [182, 10])
    assert (scenario.n_outputs(0), scenario.n_outputs(1)) == (182, 192)
    assert scenario.targets(torch.tensor([3, 3]), torch.tensor([0, 1])).tolist() == [3, 185]
    assert scenario.old_output_groups(1) == [slice(0, 182)]
    assert scenario.units_existing_before(1) == 182
    assert not scenario.evaluable(1, 182) and scenario.evaluable(1, 192)


def test_task_il_loss_is_the_softmax_over_the_tasks_own_units():
    scenario = Scenario("task", [2, 3])
    logits = torch.randn(2, 5)
    y, task_ids = torch.tensor([1, 2]), torch.tensor([0, 1])
    expected = (F.cross_entropy(logits[:1, 0:2], y[:1]) + F.cross_entropy(logits[1:, 2:5], y[1:])) / 2
    assert scenario.loss(logits, y, task_ids) == pytest.approx(float(expected))
    assert scenario.old_output_groups(2 - 1) == [slice(0, 2)]
    big = torch.tensor([[0.0, 1.0, 9.0, 0.0, 0.0]])
    assert int(scenario.predict(big, 0)) == 1  # the other task's larger logit is ignored


def test_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="scenario='joint'"):
        Scenario("joint", [2])


def test_grow_head_keeps_old_rows_exactly():
    model = MLP((1, 4, 4), 3, [8])
    old_weight, old_bias = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    assert grow_head(model, 5)
    assert model.head.weight.shape == (5, 8)
    assert torch.equal(model.head.weight[:3], old_weight) and torch.equal(model.head.bias[:3], old_bias)
    assert not grow_head(model, 5)


def test_a_full_class_il_head_holds_every_class_from_the_start_and_trains_over_all_of_them():
    """class_head=full (Mammoth's head): every task's head has all units; the loss and the prediction span
    them, unseen classes included; the task-aware prediction stays within the task's units."""
    scenario = Scenario("class", [2, 3, 2], class_head="full")
    assert [scenario.n_outputs(t) for t in range(3)] == [7, 7, 7]
    assert scenario.units_existing_before(1) == 7 and scenario.task_units(1) == slice(2, 5)
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    y, task_ids = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 2])
    targets = torch.tensor([0, 1, 4, 5])
    torch.testing.assert_close(scenario.loss(logits, y, task_ids), F.cross_entropy(logits, targets))
    assert torch.equal(scenario.predict(logits, 0), logits.argmax(1))
    assert torch.equal(scenario.predict(logits, 1, task_aware=True), logits[:, 2:5].argmax(1) + 2)
    assert Scenario("class", [2, 3, 2]).n_outputs(0) == 2  # the default grows


def test_a_full_head_outside_class_il_is_refused(make_config):
    with pytest.raises(ConfigError, match="class_head=full: only class-IL"):
        validate_config(make_config("class_head=full", "scenario=task"))


@pytest.mark.parametrize(
    ("name", "task_aware", "units"),
    [("task", False, 3), ("domain", False, 3), ("class", False, 5), ("class", True, 3)],
)
def test_a_last_task_prediction_chooses_among_its_own_units_or_the_whole_head(name, task_aware, units):
    # tasks of 2 and 3 classes: task-IL and task-aware choose among the last task's 3, domain-IL's head has
    # max(2, 3) units, class-IL's every class's 5 (grown or full)
    assert Scenario(name, [2, 3]).units_predicted_among(1, task_aware) == units
    assert Scenario(name, [2, 3], "full").units_predicted_among(1, task_aware) == units
