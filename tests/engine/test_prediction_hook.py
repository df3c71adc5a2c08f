"""The method's prediction at evaluation (methods/base.py `Method.predictor`): its scores replace the logits under the
scenario's masking, it is built once per split's evaluation, the evaluation cache and the Score's best snapshot key
on its prediction state, and a method without it evaluates exactly as the logits say, at no cost."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.engine.evaluator import Evaluator
from cl_bench.methods.base import Method
from cl_bench.methods.baseline import Baseline
from cl_bench.models.head import grow_head
from tests.engine.test_trainer_parts import make_trainer
from tests.helpers.config import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL_BATCH = 16  # several batches per split: the predictor must still be built once


class ConstantUnit(Method):
    """Predicts the output unit its prediction state names, for every input; counts the predictors it builds."""

    def __init__(self, unit: int):
        self.unit = torch.tensor(unit)
        self.built = 0

    def prediction_state(self) -> dict[str, Tensor]:
        return {"unit": self.unit.clone()}

    def predictor(self, model: nn.Module, state: dict[str, Tensor]):
        self.built += 1
        n_units = model.head.out_features
        return lambda x: F.one_hot(state["unit"].expand(len(x)), n_units).float()


def class_il_trainer(make_config, *overrides: str):
    return make_trainer(make_config(TINY, "scenario=class", *overrides), [])


def evaluator_of(trainer, method: Method) -> Evaluator:
    return Evaluator(trainer.tasks, trainer.scenario, EVAL_BATCH, contextlib.nullcontext(), "scenario", "training",
                     method)


def grown(trainer) -> nn.Module:
    """The trainer's model with the head of the last task (every task evaluable)."""
    grow_head(trainer.model, trainer.scenario.n_outputs(len(trainer.tasks) - 1))
    return trainer.model


def units_and_tasks(trainer, split: str):
    """Per task: its examples' output units (global) and local labels."""
    out = []
    for k, task in enumerate(trainer.tasks):
        y = torch.cat([y for _, y in getattr(task, split).eval_batches(1024)])
        out.append((trainer.scenario.targets(y, torch.full_like(y, k)), y))
    return out


def constant_accuracies(trainer, split: str, unit: int) -> dict[str, list[float]]:
    """By hand: every example predicted `unit`; task-aware, the argmax of a one-hot outside the task's units within
    them is the task's first unit (local label 0)."""
    scenario_acc, aware = [], []
    for k, (units, local) in enumerate(units_and_tasks(trainer, split)):
        scenario_acc.append(float((units == unit).double().mean()))
        own = trainer.scenario.task_units(k)
        aware.append(float((local == unit - own.start).double().mean() if own.start <= unit < own.stop
                           else (local == 0).double().mean()))
    return {"scenario": scenario_acc, "task_aware": aware}


def logit_accuracies(trainer, model: nn.Module, split: str) -> dict[str, list[float]]:
    """By hand: argmax of the logits over every unit, and within the task's own units."""
    scenario_acc, aware = [], []
    model.eval()
    with torch.no_grad():
        for k, task in enumerate(trainer.tasks):
            x = torch.cat([x for x, _ in getattr(task, split).eval_batches(1024)])
            units, _ = units_and_tasks(trainer, split)[k]
            logits, own = model(x), trainer.scenario.task_units(k)
            scenario_acc.append(float((logits.argmax(1) == units).double().mean()))
            aware.append(float((logits[:, own].argmax(1) + own.start == units).double().mean()))
    model.train()
    return {"scenario": scenario_acc, "task_aware": aware}


def test_a_predictor_replaces_the_logits_under_the_scenarios_masking(make_config):
    trainer = class_il_trainer(make_config)
    model = grown(trainer)
    method = ConstantUnit(unit=1)
    evaluator = evaluator_of(trainer, method)
    val = evaluator.val(model, 1, 1)
    assert val == constant_accuracies(trainer, "val", 1)
    assert val != logit_accuracies(trainer, model, "val")
    assert method.built == 1  # once for the split, not per batch (EVAL_BATCH gives several)
    evaluator.test(model)
    assert method.built == 2


def test_same_weights_with_another_prediction_state_are_evaluated_again(make_config):
    trainer = class_il_trainer(make_config)
    model = grown(trainer)
    method = ConstantUnit(unit=1)
    evaluator = evaluator_of(trainer, method)
    first = evaluator.val(model, 1, 1)
    assert evaluator.val(model, 1, 1) == first and method.built == 1  # unchanged state: read back
    method.unit = torch.tensor(3)
    assert evaluator.val(model, 1, 1) == constant_accuracies(trainer, "val", 3) != first
    assert method.built == 2
    method.unit = torch.tensor(1)
    assert evaluator.val(model, 1, 1) == first and method.built == 3  # the cache holds the last state only


def test_best_test_uses_the_snapshots_prediction_state_also_after_a_checkpoint(make_config):
    trainer = class_il_trainer(make_config)
    model = grown(trainer)
    mean = lambda unit: sum(constant_accuracies(trainer, "val", unit)["scenario"])
    units = sorted(range(model.head.out_features), key=mean)
    worse_unit, best_unit = units[0], units[-1]
    assert mean(worse_unit) < mean(best_unit)
    method = ConstantUnit(best_unit)
    evaluator = evaluator_of(trainer, method)
    evaluator.val(model, 1, 1)
    method.unit = torch.tensor(worse_unit)  # same weights, a worse prediction state: not the best point
    evaluator.val(model, 1, 1)
    assert int(evaluator.best[1].prediction["unit"]) == best_unit
    expected = constant_accuracies(trainer, "test", best_unit)
    assert evaluator.best_test(model) == expected

    buffer = io.BytesIO()
    torch.save(evaluator.state_dict(), buffer)  # as a checkpoint: read back with weights_only
    buffer.seek(0)
    restored = evaluator_of(trainer, method)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.best_test(model) == expected  # the method's own state is still worse_unit


def test_a_method_without_predictor_evaluates_its_logits_at_no_cost(make_config, monkeypatch):
    def never(*args):
        raise AssertionError("the evaluation asked a method without predictor for its prediction")

    monkeypatch.setattr(Method, "prediction_state", never)
    monkeypatch.setattr(Method, "predictor", never)
    trainer = class_il_trainer(make_config)
    model = grown(trainer)
    evaluator = evaluator_of(trainer, Baseline())
    assert evaluator.predictor is None
    assert evaluator.val(model, 1, 1) == logit_accuracies(trainer, model, "val")
    assert evaluator.test(model) == logit_accuracies(trainer, model, "test")
    assert evaluator.best_test(model) == logit_accuracies(trainer, model, "test")
    assert evaluator.state_dict()["best"]["prediction"] == {}
