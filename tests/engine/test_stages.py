"""A method's stages after a task's main steps (Method.stages): their data, steps and learning rate, their batches
from the sampler's stream, their rows inside the task, a resume inside a stage, and no cost for a method without."""

from __future__ import annotations

import copy

import pytest
import torch

from cl_bench.data.task import TensorSplit
from cl_bench.engine.step import Step
from cl_bench.engine.trainer import index_batches
from cl_bench.methods.base import Method, Stage, TrainContext, TrainData
from tests.engine.test_trainer_parts import assert_same, make_trainer
from tests.helpers.config import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

FIRST, SECOND = (20, 7, 0.25), (16, 3, 2.0)  # (examples, steps, lr factor) of each stage


class Staged(Method):
    """Cross-entropy, and at every task but the first two stages: FIRST's steps on the task's first examples, then
    SECOND's on the previous task's first examples (labelled with that task)."""

    owns = frozenset({"stages"})

    def __init__(self):
        self.calls: list[int] = []

    def stages(self, ctx: TrainContext) -> list[Stage]:
        self.calls.append(ctx.task_idx)
        if ctx.task_idx == 0:
            return []
        stages = []
        for name, task_idx, (n, steps, factor) in (("first", ctx.task_idx, FIRST), ("second", ctx.task_idx - 1, SECOND)):
            x, y = ctx.tasks[task_idx].train.gather(torch.arange(n))
            stages.append(Stage(name, TrainData(TensorSplit(x, y), torch.full((n,), task_idx)), steps, factor))
        return stages


STAGED = ("method._target_=tests.engine.test_stages.Staged", "scenario=class", "eval_every=10")


@pytest.fixture
def steps(monkeypatch) -> list[dict]:
    """What every step of a trainer sees: the stage, the optimiser's learning rate, the batch's indices and tasks."""
    seen: list[dict] = []
    take_step = Step.__call__

    def recorded(self, ctx, batch, task_weight, sums):
        lrs = {group["lr"] for group in self.optimizer.param_groups}
        seen.append({"stage": ctx.part, "lr": lrs, "index": batch.index.clone(), "tasks": batch.task_ids})
        return take_step(self, ctx, batch, task_weight, sums)

    monkeypatch.setattr(Step, "__call__", recorded)
    return seen


def test_stages_run_after_the_main_steps_on_their_data_at_their_learning_rate(make_config, steps):
    cfg = make_config(TINY, *STAGED)
    rows: list[dict] = []
    trainer = make_trainer(cfg, rows)
    trainer.run()
    lr = trainer.settings.lr
    assert trainer.method.calls == [0, 1]  # once per task, when its main steps end
    assert [s["stage"] for s in steps] == [0] * 60 + [1] * FIRST[1] + [2] * SECOND[1]
    assert all(s["lr"] == {trainer.settings.first_lr} for s in steps[:30])
    assert all(s["lr"] == {lr} for s in steps[30:60])
    assert all(s["lr"] == {lr * FIRST[2]} for s in steps[60:67]) and all(s["lr"] == {lr * SECOND[2]} for s in steps[67:])
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [lr]  # restored after the stages
    assert all(torch.equal(s["tasks"], torch.ones_like(s["tasks"])) for s in steps[30:67])
    assert all(torch.equal(s["tasks"], torch.zeros_like(s["tasks"])) for s in steps[67:])  # the stage's task ids

    # the batches: from one sampler stream, each part's drawn when it starts
    generator = torch.Generator().manual_seed(cfg.seed)
    sizes = [(len(trainer.tasks[0].train), 30), (len(trainer.tasks[1].train), 30), FIRST[:2], SECOND[:2]]
    expected = [index for n, count in sizes for index in index_batches(n, cfg.batch_size, count, generator)]
    assert len(expected) == len(steps) and all(torch.equal(s["index"], i) for s, i in zip(steps, expected))

    # the task's rows go on through the stages, evaluated at each part's end, inside the Score's window (the
    # task's points from its first update on)
    task_b = [(row["task"], row["task_step"], row["step"]) for row in rows if row["task"] == 1]
    assert task_b == [(1, step, 30 + step) for step in (0, 10, 20, 30, 37, 40)]
    assert trainer.global_step == 70 and trainer.result.train_steps == 70
    assert "loss/task" in rows[-1] and len(trainer.result.val_matrix["scenario"]) == 2
    means = {row["task_step"]: sum(row[f"val/{t.name}"] for t in trainer.tasks) / 2 for row in rows if row["task"] == 1}
    assert trainer.evaluator.best[0] == max(mean for step, mean in means.items() if step > 0) == means[37]


def test_a_run_resumed_inside_a_stage_or_at_the_main_steps_end_equals_an_uninterrupted_one(make_config):
    cfg = make_config(TINY, *STAGED, "checkpoint.every=4")
    rows: list[dict] = []
    saved: list[dict] = []
    whole = make_trainer(cfg, rows)
    whole.on_checkpoint = lambda state: saved.append(copy.deepcopy(state))  # as written to a file
    whole.run()
    inside = {state["global_step"]: state for state in saved if state["task"] is not None and state["task"]["task_idx"]}
    assert sorted(inside) == [32, 36, 40, 44, 48, 52, 56, 60, 64, 68]  # 60: the main steps' end; 64, 68: stages
    assert "stage" not in inside[60]["task"] and inside[64]["task"]["stage"] == 1 and inside[68]["task"]["stage"] == 2
    for step in (60, 64, 68):
        resumed_rows: list[dict] = []
        resumed = make_trainer(cfg, resumed_rows)
        resumed.load_state_dict(copy.deepcopy(inside[step]))
        assert_same(resumed.state_dict(), inside[step])
        result = resumed.run()
        assert_same(resumed_rows, rows[inside[step]["rows_logged"] :])
        assert_same(resumed.model.state_dict(), whole.model.state_dict())
        assert_same(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
        for name in ("val_matrix", "test_matrix", "best_test"):
            assert_same(getattr(result, name), getattr(whole.result, name))


def test_a_method_without_stages_is_never_asked_and_saves_the_state_it_saved_before(make_config, monkeypatch):
    def never(self, ctx):
        raise AssertionError("asked a method without stages for them")

    monkeypatch.setattr(Method, "stages", never)
    saved: list[dict] = []
    trainer = make_trainer(make_config(TINY, "checkpoint.every=15"), [])
    trainer.on_checkpoint = lambda state: saved.append(copy.deepcopy(state))
    trainer.run()
    assert trainer.global_step == 60
    tasks = [state["task"] for state in saved if state["task"] is not None]
    assert [task["step"] for task in tasks] == [15, 15]  # mid-task checkpoints only; the task ends' have none
    assert all(set(task) == {"task_idx", "step", "since", "sums", "nonfinite", "sampler_state"} for task in tasks)
