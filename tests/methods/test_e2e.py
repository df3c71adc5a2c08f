"""End-to-End Incremental Learning (Castro et al. 2018): the cross-distilled loss and the fine-tuning's temporary
distillation against their formulas, the balanced set, the class-IL rule, a run, and a resume inside the stage."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.engine.run import run_experiment
from cl_bench.methods.build import build_method
from cl_bench.methods.e2e import E2E
from cl_bench.records.checkpoint import load_checkpoint
from tests.helpers.config import TINY
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import COMPARED, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


class Sequence:
    """Three class-IL tasks of two classes (20 examples each), a seeded MLP, and E2E at their task boundaries."""

    def __init__(self, e2e: E2E):
        self.tasks = random_tasks(3, (3,), 2, n=40, seed=0, labels="cyclic")
        self.scenario = Scenario("class", [2, 2, 2])
        self.model = seeded_mlp((3,), 2, [5], dtype=torch.float64)
        self.e2e = e2e

    def through(self, task_idx: int):
        """Start and "train" (move the weights of) every task before `task_idx`, then start it: its context."""
        for t in range(task_idx):
            ctx = start_task(self.model, self.tasks, self.scenario, t, self.e2e)
            nudge(self.model, 0.3, seed=t)
            self.e2e.after_task(ctx)
        return start_task(self.model, self.tasks, self.scenario, task_idx, self.e2e)


def soft_cross_entropy(teacher: torch.Tensor, student: torch.Tensor, T: float) -> torch.Tensor:
    """−Σ_j softmax(teacher/T)_j · log softmax(student/T)_j per example, written out."""
    p = torch.exp(teacher / T) / torch.exp(teacher / T).sum(1, keepdim=True)
    log_q = student / T - torch.log(torch.exp(student / T).sum(1, keepdim=True))
    return -(p * log_q).sum(1)


def test_the_cross_distilled_loss_and_the_temporary_distillation_follow_castros_formulas():
    T = 3.0
    seq = Sequence(E2E(memory_size=12, T=T, balanced_epochs=1))
    ctx = seq.through(2)  # tasks 0 and 1 done: the teacher is the model as task 2 starts, its first 4 units
    previous = copy.deepcopy(seq.model)
    nudge(seq.model, 0.3, seed=10)
    batch = batch_of(seq.tasks[2], 2, range(8))
    logits = seq.model(batch.x)
    old = previous(batch.x)[:, :4]
    assert logits.shape[1] == 6
    terms = seq.e2e.loss_terms(ctx, batch, logits)
    distill = (soft_cross_entropy(old[:, 0:2], logits[:, 0:2], T) + soft_cross_entropy(old[:, 2:4], logits[:, 2:4], T))
    assert set(terms) == {"distill"}
    assert torch.allclose(terms["distill"], distill.mean(), rtol=1e-12)
    # L = L_C + Σ_f L_D_f: the trainer's "task" term is the cross-entropy over all six classes seen
    global_labels = batch.y + 4
    by_hand = -(logits.log_softmax(1).gather(1, global_labels[:, None])).mean() + distill.mean()
    assert torch.allclose(seq.scenario.loss(logits, batch.y, batch.task_ids) + terms["distill"], by_hand, rtol=1e-12)

    # the balanced fine-tuning: the new classes' logits distilled too, the model at the end of step 1 the teacher
    assert len(seq.e2e.stages(ctx)) == 1
    end_of_step_one = copy.deepcopy(seq.model)
    nudge(seq.model, 0.3, seed=11)
    logits = seq.model(batch.x)
    terms = seq.e2e.loss_terms(ctx, batch, logits)
    distill = (soft_cross_entropy(old[:, 0:2], logits[:, 0:2], T) + soft_cross_entropy(old[:, 2:4], logits[:, 2:4], T))
    distill_new = soft_cross_entropy(end_of_step_one(batch.x)[:, 4:6], logits[:, 4:6], T)
    assert torch.allclose(terms["distill"], distill.mean(), rtol=1e-12)
    assert torch.allclose(terms["distill_new"], distill_new.mean(), rtol=1e-12)


@pytest.mark.parametrize(("task_idx", "per_class"), [(1, 6), (2, 3)])  # memory 12 over 2, then 4 old classes
def test_the_balanced_set_holds_the_memorys_exemplars_and_as_many_of_each_new_class(task_idx, per_class):
    seq = Sequence(E2E(memory_size=12, balanced_epochs=2.5, lr_factor=0.1))
    ctx = seq.through(task_idx)
    memory = {key: value.clone() for key, value in seq.e2e.memory.memory.items()}
    (stage,) = seq.e2e.stages(ctx)
    split, task_ids = stage.data.split, stage.data.task_ids
    n_old = len(memory["y"])
    assert torch.equal(split.x[:n_old], memory["x"]) and torch.equal(task_ids[:n_old], memory["task_ids"])
    classes = seq.scenario.targets(split.y, task_ids)  # the class of each example over the classes seen
    assert torch.equal(torch.bincount(classes), torch.full((2 * (task_idx + 1),), per_class))
    new_x, new_y = split.x[n_old:], split.y[n_old:]
    train = seq.tasks[task_idx].train
    rows = [int((train.x == x).all(1).nonzero()) for x in new_x]  # each one of the task's own examples
    assert torch.equal(train.y[rows], new_y) and len(set(rows)) == len(rows)
    assert stage.steps == math.ceil(2.5 * len(split) / ctx.batch_size) and stage.lr_factor == 0.1
    assert seq.e2e.stages(ctx)[0].data.split.x.equal(split.x)  # asked again (a resume): the same stage


def test_e2e_is_refused_outside_class_il_and_its_parameters_are_checked(make_config):
    for scenario in ("task", "domain"):
        with pytest.raises(ConfigError, match="defined only in class-IL"):
            build_method(make_config(TINY, "method=e2e").method, scenario)
    with pytest.raises(ConfigError, match="method.lr_factor=0"):
        build_method(make_config(TINY, "method=e2e", "method.lr_factor=0").method, "class")
    with pytest.raises(ConfigError, match="method.memory_size=5: smaller than the 10 classes"):
        E2E(memory_size=5).check(random_tasks(5, (3,), 2, n=8, seed=0))


def test_a_tiny_class_il_run_trains_the_balanced_fine_tuning_inside_task_b(tmp_path):
    baseline, _ = tiny_run(tmp_path, "method=baseline", "scenario=class", name="baseline")  # fills the task-A cache
    summary, run_dir = tiny_run(tmp_path, "method=e2e", "scenario=class", "method.balanced_epochs=2", name="e2e")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["first_task_cached"] is True  # task A trains as the baseline's
    rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    task_b = rows.query("task == 1")
    # the balanced set: 40 exemplars of each of the 5 old classes and 40 of each new one, 2 epochs in batches of 64
    stage_steps = math.ceil(2 * 400 / 64)
    assert task_b["task_step"].tolist() == [0, 10, 20, 30, 40, 30 + stage_steps]
    assert task_b["loss/distill"].iloc[1:].notna().all()
    assert task_b["loss/distill_new"].notna().tolist() == [False] * 4 + [True] * 2  # only in the stage
    assert summary["train_steps"] == baseline["train_steps"] + stage_steps - 30  # task A's steps came from the cache
    training = task_b.query("task_step > 0")  # the Score's window: B's points from its first update on, the stage's too
    assert summary["score"] == pytest.approx(training[[c for c in rows if c.startswith("val/")]].mean(axis=1).max())


@pytest.mark.parametrize("row", [7, 8])  # signalled at the main steps' end (task step 30), inside the stage (40)
def test_an_e2e_run_stopped_inside_the_stage_and_resumed_equals_an_uninterrupted_one(make_config, tmp_path, row):
    settings = (TINY, "method=e2e", "scenario=class", "method.balanced_epochs=2", "first_task.cache=false")
    whole = run_experiment(make_config(*settings), tmp_path / "whole")
    stopped = run_experiment(
        make_config(*settings, "logger._target_=tests.helpers.SignalAtRow", f"+logger.row={row}"), tmp_path / "run"
    )
    assert stopped["status"] == "interrupted"
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["task_step"] == (30 if row == 7 else 40)
    resumed = run_experiment(make_config(*settings), tmp_path / "run")
    assert resumed["status"] == "ok" and resumed.get("resumed_from"), resumed.get("error")
    task = load_checkpoint(Path(resumed["resumed_from"]))["task"]
    # stopped at the evaluation the signal came in: the main steps' end (the stage chosen, none of its steps taken)
    # or inside the stage
    assert (task["task_idx"], task.get("stage", 0), task["step"]) == ((1, 0, 30) if row == 7 else (1, 1, 40))
    assert [json.dumps(resumed[key]) for key in COMPARED] == [json.dumps(whole[key]) for key in COMPARED]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
