"""A method that keeps per-example state of the training data indexes the data the trainer draws from
(issue 24, finding 5): KD combined with a method that owns the training data (joint training, End-to-End)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cl_bench.core.scenario import Scenario
from cl_bench.methods.compose import Combined
from cl_bench.methods.joint import Joint
from cl_bench.methods.kd import KD
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task, train_context
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("overrides", [("method=joint", "plus=[kd]"), ("method=e2e", "plus=[kd]", "scenario=class")])
def test_kd_combined_with_a_data_owner_runs(tmp_path, overrides):
    """`method=joint plus=[kd]` and `method=e2e plus=[kd] scenario=class` failed at task B's first step with an
    IndexError: KD recorded its teacher on the task's split while the batches indexed the owner's larger data."""
    summary, run_dir = tiny_run(tmp_path, *overrides)
    assert summary["status"] == "ok", summary.get("error")
    rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    assert rows.query("task == 1")["loss/kd"].iloc[1:].notna().all()


def test_recorded_targets_are_the_teachers_outputs_on_the_examples_the_batch_holds():
    """With joint training's union as the data, the recorded teacher outputs looked up by `batch.index` are the
    teacher's outputs on the very examples of the batch (an index into the task's own split would pair another
    example's targets, or fail)."""
    tasks = random_tasks(2, (4,), 2, 16, seed=0, dtype=torch.float32)
    scenario = Scenario("domain", [2, 2])
    model = seeded_mlp((4,), 2, [6])
    kd, joint = KD(teacher="recorded"), Joint()
    combined = Combined({"method": joint, "plus.kd": kd})
    start_task(model, tasks, scenario, 0, combined)
    ctx = train_context(model, tasks, scenario, 1)
    ctx.data = combined.train_data(ctx)
    combined.before_task(ctx)
    assert len(kd.recorded) == 32  # both tasks' examples: what the batches index
    index = torch.tensor([0, 17, 31, 5])
    x, y = ctx.data.split.gather(index)
    with torch.inference_mode():
        expected = kd.teacher(ctx)(x)
    torch.testing.assert_close(kd.recorded.index_select(0, index), expected)
    batch = batch_of(tasks[1], 1, [0, 1])  # a batch whose indices point into the union
    assert batch.index.max() < len(kd.recorded)


def test_kd_in_a_stage_distils_with_its_live_teacher(tmp_path):
    """End-to-End's balanced fine-tuning draws from other data than the main steps: recorded outputs (indexed by
    the main data) are not used there; the live teacher gives every example its own target."""
    summary, run_dir = tiny_run(tmp_path, "method=e2e", "plus=[kd]", "scenario=class", "method.balanced_epochs=1")
    assert summary["status"] == "ok", summary.get("error")
    rows = pd.read_json(run_dir / "metrics.jsonl", lines=True).query("task == 1")
    assert rows["loss/kd"].iloc[1:].notna().all() and rows["loss/distill_new"].notna().any()


def test_joint_with_kd_recorded_equals_kd_with_its_live_teacher(tmp_path):
    """Every example of joint training's union gets the teacher's output on itself: the recorded run's
    distillation equals the live teacher's (the same outputs, computed once or at every step)."""
    runs = {mode: tiny_run(tmp_path, "method=joint", "plus=[kd]", f"plus.kd.teacher={mode}", name=mode)
            for mode in ("recorded", "live")}
    losses = {}
    for mode, (summary, run_dir) in runs.items():
        assert summary["status"] == "ok", summary.get("error")
        losses[mode] = pd.read_json(run_dir / "metrics.jsonl", lines=True)["loss/kd"].dropna().tolist()
    assert len(losses["recorded"]) > 1
    assert losses["recorded"] == pytest.approx(losses["live"], rel=1e-4)
