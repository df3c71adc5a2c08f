"""The newer baselines Mammoth ships (ER-ACE, X-DER, LwF.MC, GDumb, BiC, LUCIR): a run stopped by a signal inside task
A, inside task B, or inside a stage of task B (a fit, a bias correction, a fine-tuning) and resumed equals the
uninterrupted run, metrics file included."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cl_bench.engine.run import run_experiment
from tests.helpers.config import TINY
from tests.helpers.runs import COMPARED

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {  # each method's state: buffers, teachers, memories, corrections, held-out rows, stages
    "er_ace": ["method=er_ace"],
    "xder": ["method=xder", "checkpoint.every=7"],
    "lwf_mc": ["method=lwf_mc"],
    "gdumb": ["method=gdumb", "method.fitting_epochs=3", "method.memory_size=100"],
    "bic": ["method=bic", "method.bias_epochs=25"],
    "lucir": ["method=lucir", "method.fitting_epochs=5"],
}
WITH_STAGES = ("gdumb", "bic", "lucir")
MAIN_STEPS = 30  # the tiny preset's steps a task
STOPS = {  # the metrics row a signal comes at: (its task, whether it is in a stage)
    "task A": lambda rows: rows.query("task == 0 and task_step == 20").index[0],
    "task B": lambda rows: rows.query("task == 1 and task_step == 20").index[0],
    "task B's stage": lambda rows: rows.query(f"task == 1 and task_step > {MAIN_STEPS}").index[0],
}


@pytest.mark.parametrize(
    "method, stop",
    [(method, stop) for method in METHODS for stop in STOPS if stop != "task B's stage" or method in WITH_STAGES],
)
def test_stopped_by_a_signal_and_resumed_equals_uninterrupted(make_config, tmp_path, method, stop):
    settings = (TINY, *METHODS[method], "scenario=class", "first_task.cache=false")
    whole = run_experiment(make_config(*settings), tmp_path / "whole")
    assert whole["status"] == "ok", whole.get("error")
    row = STOPS[stop](pd.read_json(tmp_path / "whole" / "metrics.jsonl", lines=True))
    stopped = run_experiment(
        make_config(*settings, "logger._target_=tests.helpers.SignalAtRow", f"+logger.row={row}"), tmp_path / "run"
    )
    assert stopped["status"] == "interrupted"
    resumed = run_experiment(make_config(*settings), tmp_path / "run")
    assert resumed["status"] == "ok" and resumed.get("resumed_from"), resumed.get("error")
    assert [json.dumps(resumed[key]) for key in COMPARED] == [json.dumps(whole[key]) for key in COMPARED]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
