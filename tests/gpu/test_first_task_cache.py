"""GPU tier: one cache_dir for GPU and CPU runs. The task-A cache is keyed by the device type (a task A trained with
CUDA's arithmetic is not the CPU's), so a run takes only the entry its own device trained, and goes on exactly as
if it had trained task A itself; a run on the other device trains its own, within the tolerances of a run set
against another device's. The CPU twin is the CPU-to-CPU case."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers.devices import ACCURACY_ATOL, LOSS_ATOL, LOSS_RTOL
from tests.helpers.runs import tiny_run

DEVICE_PAIRS = [
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cuda", "cpu", id="cuda-cpu", marks=pytest.mark.gpu),
    pytest.param("cpu", "cuda", id="cpu-cuda", marks=pytest.mark.gpu),
]


def task_a_rows(run_dir) -> pd.DataFrame:
    rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    return rows.query("task == 0").dropna(axis=1, how="all").reset_index(drop=True)


@pytest.mark.parametrize(("first", "then"), DEVICE_PAIRS)
def test_a_run_takes_the_task_a_its_own_device_trained(tmp_path, first, then):
    common = ["method=kd", "scenario=class", "precision=fp32"]  # the output_root, hence cache_dir, is the test's
    trained, trained_dir = tiny_run(tmp_path, *common, f"device={first}", name="first")
    other, other_dir = tiny_run(tmp_path, *common, f"device={then}", "lr=1e-4", name="other")
    again, again_dir = tiny_run(tmp_path, *common, f"device={then}", "lr=1e-2", name="again")
    uncached, uncached_dir = tiny_run(tmp_path, *common, f"device={then}", "lr=1e-2", "first_task.cache=false",
                                      name="uncached")
    assert all(s["status"] == "ok" for s in (trained, other, again, uncached))
    # a run that takes task A from the cache is the run that trains it (its state loaded onto the device)
    assert (again_dir / "metrics.jsonl").read_text() == (uncached_dir / "metrics.jsonl").read_text()
    same = first == then
    assert (trained["first_task_cached"], other["first_task_cached"], again["first_task_cached"]) == (False, same, True)
    assert len(list((tmp_path / "outputs" / "cache" / "first_task").glob("*.pt"))) == (1 if same else 2)
    pd.testing.assert_frame_equal(task_a_rows(again_dir), task_a_rows(other_dir))
    expected, rows = task_a_rows(trained_dir), task_a_rows(other_dir)
    if same:
        pd.testing.assert_frame_equal(rows, expected)
    losses = [c for c in rows.columns if c.startswith("loss/")]
    accuracies = [c for c in rows.columns if c.startswith("val")]
    pd.testing.assert_frame_equal(rows[losses], expected[losses], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    pd.testing.assert_frame_equal(rows[accuracies], expected[accuracies], rtol=0, atol=ACCURACY_ATOL)
