"""Records that say what happened (issue 24, findings 8 and 9): a resumed run's summary means what an
uninterrupted one's does, a combination's parameters are all recorded, a combination the docs refuse is
refused, the loss term names the trainer owns are reserved, and the files a resume rewrites are rewritten
whole or not at all."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from cl_bench.core import files as core_files
from cl_bench.engine.run import run_experiment
from cl_bench.records.metrics_log import MetricsLog
from cl_bench.records.run_folder import saved_config_path
from tests.helpers.cli import cl_bench
from tests.helpers.config import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def stopped_and_resumed(make_config, tmp_path, *overrides: str, row: int = 5) -> tuple[dict, dict]:
    """The summaries of an uninterrupted run and of the same run stopped by a signal at metrics row `row`
    (task B) and resumed."""
    whole = run_experiment(make_config(TINY, *overrides), tmp_path / "whole")
    run_dir = tmp_path / "run"
    stopped = run_experiment(make_config(TINY, *overrides, "logger._target_=tests.helpers.SignalAtRow",
                                         f"+logger.row={row}"), run_dir)
    assert stopped["status"] == "interrupted"
    saved = OmegaConf.load(saved_config_path(run_dir))
    saved.logger = {"_target_": "cl_bench.loggers.base.RunLogger"}  # the run's own test logger would stop it again
    OmegaConf.save(saved, saved_config_path(run_dir))
    resumed = run_experiment(make_config(TINY, *overrides, f"resume={run_dir}"), run_dir, override_keys=["resume"])
    assert resumed["status"] == "ok", resumed.get("error")
    return whole, resumed


def test_a_resumed_run_that_took_task_a_from_the_cache_says_so(make_config, tmp_path):
    """Finding 8: after a stop and `resume=`, a run that took task A from the cache reported
    `first_task_cached: false`."""
    first = run_experiment(make_config(TINY), tmp_path / "fills_the_cache")
    assert first["first_task_cached"] is False
    whole, resumed = stopped_and_resumed(make_config, tmp_path)
    assert whole["first_task_cached"] is True and resumed["first_task_cached"] is True
    assert resumed["train_steps"] == whole["train_steps"]  # task B's 30 steps: task A's came from the cache


def test_a_resumed_runs_costs_count_every_part_once(make_config, tmp_path):
    whole, resumed = stopped_and_resumed(make_config, tmp_path, "first_task.cache=false")
    assert resumed["first_task_cached"] is False
    assert resumed["train_steps"] == whole["train_steps"] == 60
    assert 0 < resumed["wall_time_s"]


def test_every_parts_parameters_are_in_the_summary(make_config, tmp_path):
    """Finding 8: summary.json's `method_params` lacked the `plus` parts' parameters."""
    summary = run_experiment(make_config(TINY, "method=kd", "plus=[replay]", "plus.replay.memory_size=50"),
                             tmp_path / "run")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["method_params"]["method"]["kappa"] == 1.0
    assert summary["method_params"]["plus.replay"]["memory_size"] == 50


def test_the_same_method_twice_is_refused(tmp_path):
    """Finding 8: `plus=[replay,replay]` ran as "Baseline + Replay"; the docs say the same method twice is refused
    (Hydra composes the two into one node: the command line tells)."""
    done = cl_bench(tmp_path, "plus=[replay,replay]")
    assert done.returncode != 0 and "plus=[replay,replay]: replay is listed twice" in done.stderr
    done = cl_bench(tmp_path, "method=replay", "plus=[replay]")
    assert done.returncode != 0 and "method and plus.replay are both Replay: combine a method once" in done.stderr


def test_a_parts_override_without_the_part_names_both(make_config, tmp_path):
    """Finding 8: `+plus.replay.memory_size=10` without `plus=[replay]` failed with `KeyError: '_target_'`."""
    summary = run_experiment(make_config(TINY, "+plus.replay.memory_size=10"), tmp_path / "run")
    assert summary["status"] == "failed"
    assert "plus.replay.memory_size is set, but replay is not in plus" in summary["error"]
    assert "KeyError" not in summary["error"]


@pytest.mark.parametrize("name", ["task", "total"])
def test_a_method_may_not_log_the_trainers_own_terms(make_config, tmp_path, name):
    """Finding 9: a single method could return a term named `task` or `total` and silently overwrite the
    cross-entropy."""
    summary = run_experiment(make_config(TINY, "method._target_=tests.helpers.TermNamed", f"+method.name={name}"),
                             tmp_path / "run")
    assert summary["status"] == "failed" and f"loss term {name!r}" in summary["error"]


def test_the_progress_bar_closes_when_a_run_fails(make_config, tmp_path, monkeypatch):
    """Finding 9: the progress bar was not closed when a run stopped or failed."""
    import cl_bench.engine.trainer as trainer

    opened, closed = [], []

    class Recorded(trainer.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            opened.append(self)

        def close(self):
            closed.append(self)
            super().close()

    monkeypatch.setattr(trainer, "tqdm", Recorded)
    summary = run_experiment(make_config(TINY, "method._target_=tests.helpers.NaNAtStep", "+method.step=5"),
                             tmp_path / "run")
    assert summary["status"] == "failed" and "NaN" in summary["error"]
    assert opened and all(bar in closed for bar in opened)


def test_metrics_are_rewritten_whole_or_not_at_all(tmp_path, monkeypatch):
    """Finding 9: metrics.jsonl was rewritten in place on resume; a crash then broke the next resume's row count."""
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": step}) for step in range(5)]
    path.write_text("".join(row + "\n" for row in rows))

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(core_files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        MetricsLog(path).resume(3)
    assert path.read_text() == "".join(row + "\n" for row in rows)
    monkeypatch.undo()
    log = MetricsLog(path)
    log.resume(3)
    assert path.read_text() == "".join(row + "\n" for row in rows[:3]) and len(log.rows) == 3
