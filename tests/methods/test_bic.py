"""BiC (Wu et al. 2019): the bias correction layer and the first stage's loss against their formulas by hand, the
held-out set, the second stage (the model frozen, [β, α] trained by Adam), the corrected prediction, and a run."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.bic import BiC, bias_corrected
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_bias_correction_layer_scales_and_shifts_the_latest_tasks_logits_only():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]], dtype=torch.float64)
    corrected = bias_corrected(logits, torch.tensor([0.5, 2.0], dtype=torch.float64), slice(2, 4))
    assert corrected.tolist() == [[1.0, 2.0, 2 * 3.0 + 0.5, 2 * 4.0 + 0.5, 5.0]]


class Sequence:
    """Four class-IL tasks of two classes (a full head of 8 units), a float64 MLP and BiC, taken through the hooks
    the trainer calls at a task's start and end."""

    def __init__(self, bic: BiC):
        self.tasks = random_tasks(4, (3,), 2, n=40, seed=0, labels="cyclic")
        self.scenario = Scenario("class", [2] * 4, class_head="full")
        self.model = seeded_mlp((3,), 8, [5], dtype=torch.float64)
        self.bic = bic
        self.generator = torch.Generator().manual_seed(0)

    def start(self, task_idx: int):
        ctx = start_task(self.model, self.tasks, self.scenario, task_idx, generator=self.generator)
        ctx.data = self.bic.train_data(ctx)
        self.bic.before_task(ctx)
        return ctx

    def through(self, task_idx: int, corrections: dict[int, list[float]]):
        """Tasks before `task_idx` "trained" (the weights moved), their bias correction set to `corrections`."""
        for t in range(task_idx):
            ctx = self.start(t)
            nudge(self.model, 0.3, seed=t)
            if self.bic.stages(ctx):
                with torch.no_grad():
                    self.bic.correction.copy_(torch.tensor(corrections[t], dtype=torch.float64))
            self.bic.after_task(ctx)
        return self.start(task_idx)


def soft_cross_entropy(teacher: torch.Tensor, student: torch.Tensor, T: float) -> float:
    """mean over examples of −Σ_j softmax(teacher/T)_j · log softmax(student/T)_j, written out."""
    total = 0.0
    for old_row, new_row in zip(teacher.tolist(), student.tolist()):
        old_norm = sum(math.exp(v / T) for v in old_row)
        new_norm = sum(math.exp(v / T) for v in new_row)
        total -= sum(math.exp(o / T) / old_norm * (n / T - math.log(new_norm)) for o, n in zip(old_row, new_row))
    return total / len(teacher)


def test_the_first_stage_loss_weighs_the_cross_entropy_over_the_classes_seen_and_the_corrected_teachers_distillation():
    T = 3.0
    seq = Sequence(BiC(memory_size=16, T=T, val_fraction=0.25, bias_epochs=1))
    ctx = seq.through(2, {1: [0.4, 0.6]})  # task 1's correction, applied to the teacher's units 2 and 3
    previous = copy.deepcopy(seq.model)
    nudge(seq.model, 0.3, seed=10)
    batch = batch_of(seq.tasks[2], 2, range(6))
    logits = seq.model(batch.x)
    terms = seq.bic.loss_terms(ctx, batch, logits)
    assert seq.bic.task_loss_weight(ctx) == 0.0 and set(terms) == {"classification", "distill"}
    units = batch.y + 4
    ce = F.cross_entropy(logits[:, :6], units)  # the six classes seen; the two of task 3 left out
    assert terms["classification"].item() == pytest.approx((1 - 1 / 3) * ce.item(), rel=1e-12)
    old = previous(batch.x)[:, :4].clone()
    old[:, 2:4] = 0.6 * old[:, 2:4] + 0.4
    distill = soft_cross_entropy(old, logits[:, :4], T)
    assert terms["distill"].item() == pytest.approx(1 / 3 * T**2 * distill, rel=1e-12)


def test_the_held_out_set_is_a_part_of_the_memory_and_as_many_of_the_tasks_examples_left_out_of_its_training():
    seq = Sequence(BiC(memory_size=16, val_fraction=0.25, bias_epochs=2))
    ctx = seq.through(1, {})
    memory = seq.bic.memory.memory
    held = seq.bic.held_out_data(ctx)
    trained = ctx.data.split
    assert len(held.split) == 2 * 4 and len(trained) == 40 + 16 - 8  # 4 = 0.25 · 16 exemplars, and 4 examples
    rows = lambda split: {tuple(x.tolist()) for x in split.gather(torch.arange(len(split)))[0]}  # noqa: E731
    everything = rows(seq.tasks[1].train) | {tuple(x.tolist()) for x in memory["x"]}
    assert rows(held.split).isdisjoint(rows(trained)) and rows(held.split) | rows(trained) == everything
    assert held.task_ids.tolist() == memory["task_ids"][seq.bic.held_out["memory"]].tolist() + [1] * 4
    (stage,) = seq.bic.stages(ctx)
    assert stage.steps == 2 * (8 // 8) and stage.data.split.x.equal(held.split.x)


def test_the_bias_correction_trains_only_alpha_and_beta_with_adam_and_the_prediction_uses_them():
    seq = Sequence(BiC(memory_size=16, val_fraction=0.25, bias_lr=0.01, bias_epochs=1))
    ctx = seq.through(1, {})
    assert seq.bic.prediction_state() == {}  # uncorrected until the task's bias correction
    (stage,) = seq.bic.stages(ctx)
    ctx.part, ctx.data = 1, stage.data
    weights = copy.deepcopy(seq.model.state_dict())
    optimizer = torch.optim.SGD(seq.model.parameters(), lr=0.5)
    batch = batch_of(seq.tasks[1], 1, range(8))
    logits = seq.model(batch.x)
    terms = seq.bic.loss_terms(ctx, batch, logits)
    assert set(terms) == {"bias"}
    correction = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    by_hand = F.cross_entropy(bias_corrected(logits.detach()[:, :4], correction, slice(2, 4)), batch.y + 2)
    assert terms["bias"].item() == pytest.approx(by_hand.item(), rel=1e-12)
    gradient, = torch.autograd.grad(by_hand, correction)
    terms["bias"].backward()
    seq.bic.after_backward(ctx)
    optimizer.step()
    seq.bic.after_step(ctx)
    assert all(torch.equal(value, weights[key]) for key, value in seq.model.state_dict().items())  # frozen
    step = 0.01 * gradient / (gradient.abs() + 1e-8)  # Adam's first step: lr · m̂ / (√v̂ + ε)
    assert torch.allclose(seq.bic.correction.detach().double(), torch.tensor([0.0, 1.0]).double() - step, rtol=1e-6)
    state = seq.bic.prediction_state()
    assert state["units"].tolist() == [2, 4]
    predict = seq.bic.predictor(seq.model, state)
    x = seq.tasks[0].test.x[:5]
    assert torch.equal(predict(x), bias_corrected(seq.model(x), state["correction"], slice(2, 4)))


def test_a_run_corrects_the_bias_in_a_stage_of_each_task_after_the_first(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "method=bic", "scenario=class", "method.bias_epochs=3")
    assert summary["status"] == "ok", summary.get("error")
    rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    assert rows.query("task == 0")["task_step"].max() == 30  # no correction after the first task
    task_b = rows.query("task == 1")
    assert task_b["task_step"].max() > 30 and task_b["loss/bias"].notna().tolist() == (task_b["task_step"] > 30).tolist()


def test_bic_refuses_a_held_out_fraction_that_holds_out_nothing():
    with pytest.raises(ConfigError, match="method.val_fraction=0.001: holds out no exemplar of a memory of 200"):
        BiC(memory_size=200, val_fraction=0.001).check(random_tasks(2, (3,), 2, n=8, seed=0))
