"""GPU tier: a run stopped by a signal and resumed equals an uninterrupted one on the device, and a run stopped on one
device resumes on the other (a checkpoint written on the GPU continues on the CPU, and the reverse). The CPU twin is
the CPU-to-CPU case (tests/engine/test_reliability.py has it for every method)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from cl_bench.engine.run import run_experiment
from cl_bench.records.run_folder import saved_config_path
from tests.helpers.config import TINY
from tests.helpers.devices import ACCURACY_ATOL, LOSS_ATOL, LOSS_RTOL
from tests.helpers.runs import COMPARED, tiny_run

# (written on, resumed on); the CPU-to-CPU case runs here.
DEVICE_PAIRS = [
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "cpu", id="cuda-cpu", marks=pytest.mark.gpu),
    pytest.param("cpu", "cuda", id="cpu-cuda", marks=pytest.mark.gpu),
]
# The method (its state: a Fisher and anchors; a teacher and recorded outputs; a reservoir of inputs and logits
# filled since task A; an exemplar memory, teachers and a balanced fine-tuning stage) and the metrics row whose
# logging sends the signal: inside task B's main steps, or inside E2E's stage.
STOPS = {
    "ewc": (["method=ewc", "scenario=class"], 6),
    "kd": (["method=kd", "method.teacher=recorded", "scenario=task"], 6),
    "derpp": (["method=derpp", "scenario=class", "checkpoint.every=7"], 6),
    "e2e": (["method=e2e", "scenario=class"], 9),
}


@pytest.mark.parametrize(("written_on", "resumed_on"), DEVICE_PAIRS)
@pytest.mark.parametrize("method", list(STOPS))
def test_a_run_stopped_on_one_device_and_resumed_on_another_continues_it(make_config, tmp_path, method, written_on,
                                                                           resumed_on):
    """On one device the resumed run equals the uninterrupted one; on either its rows before the stop are the
    uninterrupted run's, and those after it within the tolerances of a run set against another device's
    (tests/helpers/devices.py: the arithmetic after the stop is the other device's)."""
    overrides, stop_row = STOPS[method]
    common = [*overrides, "first_task.cache=false", f"device={written_on}", "precision=fp32"]
    if written_on == resumed_on:  # dropout draws from the device's generator: its state is restored on one device
        common.append("model.dropout=0.1")
    whole, whole_dir = tiny_run(tmp_path, *common, name="whole")
    stopped, stopped_dir = tiny_run(tmp_path, *common, "logger._target_=tests.helpers.SignalAtRow",
                                    f"+logger.row={stop_row}", name="stopped")
    assert stopped["status"] == "interrupted" and "resume=" in stopped["error"]
    OmegaConf.save(make_config(TINY, *common), saved_config_path(stopped_dir))  # as if the signal came from outside
    resumed = run_experiment(make_config(TINY, *common, f"device={resumed_on}", f"resume={stopped_dir}"), tmp_path)
    assert resumed["status"] == "ok", resumed.get("error")
    assert resumed["device"].startswith(resumed_on) and "resumed_from" in resumed
    if written_on == resumed_on:
        for key in COMPARED:
            assert json.dumps(resumed[key]) == json.dumps(whole[key]), key
        assert (stopped_dir / "metrics.jsonl").read_text() == (whole_dir / "metrics.jsonl").read_text()
    rows = pd.read_json(stopped_dir / "metrics.jsonl", lines=True)
    expected = pd.read_json(whole_dir / "metrics.jsonl", lines=True)
    assert rows.columns.tolist() == expected.columns.tolist() and rows["step"].tolist() == expected["step"].tolist()
    pd.testing.assert_frame_equal(rows.iloc[: stop_row + 1], expected.iloc[: stop_row + 1])
    losses = [c for c in rows.columns if c.startswith("loss/")]
    accuracies = [c for c in rows.columns if c.startswith("val")]
    pd.testing.assert_frame_equal(rows[losses], expected[losses], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    pd.testing.assert_frame_equal(rows[accuracies], expected[accuracies], rtol=0, atol=ACCURACY_ATOL)
