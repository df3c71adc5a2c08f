"""Sweeps on the shipped launcher and sweeper configs: every job runs, and a failing job costs the
sweep neither its other jobs nor its report (the failure is in the table)."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from cl_bench.core.layout import FAILED_SCORE
from cl_bench.engine.run import objective
from tests.helpers.cli import cl_bench
from tests.helpers.config import compose_config


def sweep_folder(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "out" / "multirun").glob("*/*")
    return sweep


def statuses(sweep: Path) -> dict[float, str]:
    """lr -> status of every job of the sweep."""
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    return {s["lr"]: s["status"] for s in summaries}


def test_slurm_preset_extends_the_plugin_config_with_our_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Hydra's deprecated schema matching of same-named configs
        cfg = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.account is None
    assert (launcher.timeout_min, launcher.gpus_per_node, launcher.cpus_per_task) == (720, 1, 4)
    assert launcher.max_num_timeout == 3  # requeued on timeout, resumed from the job folder's checkpoint
    assert launcher.setup == ["export OMP_NUM_THREADS=4"]


def test_joblib_runs_four_jobs_in_parallel_and_reports_the_failed_one(tmp_path):
    done = cl_bench(tmp_path, "hydra/launcher=joblib", "lr=0.001,0.0001,0.01,-1", "threads=null", multirun=True)
    assert done.returncode == 1 and "1 of 4 jobs did not end ok (1 failed)" in done.stderr, done.stderr
    sweep = sweep_folder(tmp_path)
    assert statuses(sweep) == {0.001: "ok", 0.0001: "ok", 0.01: "ok", -1: "failed"}
    report = (sweep / "report.md").read_text()
    assert "| Baseline |" in report and "| Baseline (low lr) |" in report and "| Baseline (lr=0.01) |" in report
    assert "| Baseline (lr=-1) | **failed** |" in report
    assert (sweep / "report.csv").exists()
    assert "Joblib.Parallel" in done.stdout + done.stderr


def test_submitit_local_runs_two_jobs_and_reports_the_failed_one(tmp_path):
    done = cl_bench(tmp_path, "hydra/launcher=slurm_local", "lr=0.001,-1", multirun=True)
    assert done.returncode == 1 and "1 of 2 jobs did not end ok (1 failed)" in done.stderr, done.stderr
    sweep = sweep_folder(tmp_path)
    assert statuses(sweep) == {0.001: "ok", -1: "failed"}
    assert "| Baseline (lr=-1) | **failed** |" in (sweep / "report.md").read_text()
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))


def trials(database: Path) -> list[tuple[str, float | None]]:
    """(state, value) of every trial of the only study in an Optuna SQLite file."""
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT t.state, v.value FROM trials t LEFT JOIN trial_values v ON v.trial_id = t.trial_id"
            " ORDER BY t.number"
        ).fetchall()


def test_optuna_search_scores_a_nan_trial_as_worst_and_resumes_its_study(tmp_path):
    search = ["hydra/sweeper=optuna_score", "lr=choice(0.001,1e30)"]  # at lr 1e30 the loss becomes NaN
    done = cl_bench(tmp_path, *search, "hydra/sweeper/sampler=grid", multirun=True)
    assert done.returncode == 0, done.stderr
    (database,) = (tmp_path / "out" / "optuna").glob("baseline-*.db")  # the method's, and the search's hash
    first = trials(database)
    assert [state for state, _ in first] == ["COMPLETE", "COMPLETE"]
    worst, best = sorted(value for _, value in first)
    assert worst == 0.0 and best > 0.3  # the NaN run scores 0, finite: the search goes on
    sweep = sweep_folder(tmp_path)
    assert statuses(sweep) == {0.001: "ok", 1e30: "failed"}
    errors = [json.loads(path.read_text()).get("error") for path in sweep.glob("*/summary.json")]
    assert any("NonFiniteLoss" in error for error in errors if error)
    assert "| Baseline (lr=1e+30) | **failed** |" in (sweep / "report.md").read_text()

    done = cl_bench(tmp_path, *search, "hydra.sweeper.n_trials=1", multirun=True)
    assert done.returncode == 0, done.stderr
    assert len(trials(database)) == 3
    assert all(state == "COMPLETE" for state, _ in trials(database))


def test_the_value_returned_to_a_sweeper_is_always_finite():
    assert objective({"status": "ok", "score": 0.7}) == 0.7
    for summary in ({"status": "ok", "score": math.nan}, {"status": "ok", "score": None}, {"status": "failed"}):
        assert objective(summary) == FAILED_SCORE == 0.0


def search(tmp_path: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """A two-trial grid search over lr into `<tmp_path>/<name>` (its own sweep folder), outputs in `tmp_path/out`."""
    return cl_bench(tmp_path, "hydra/sweeper=optuna_score", "hydra/sweeper/sampler=grid", "lr=choice(0.001,0.01)",
                    f"hydra.sweep.dir={tmp_path / name}", *overrides, multirun=True)


def best_value(sweep: Path) -> float:
    return float(yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"])


def own_best(sweep: Path) -> float:
    return max(json.loads(p.read_text())["score"] for p in sweep.glob("*/summary.json"))


def test_two_searches_of_different_experiments_each_report_their_own_best(tmp_path):
    """Issue 24, finding 2: the study was named after the method alone, so `method=ewc` searched alone and then
    with `plus=[replay]` shared one study, and the second reported the first's best value and λ as its own."""
    runs = {"alone": (), "replay": ("plus=[replay]",), "mlp400": ("model=mlp400",)}
    for name, overrides in runs.items():
        done = search(tmp_path, name, "method=ewc", *overrides)
        assert done.returncode == 0, done.stderr
    studies = sorted((tmp_path / "out" / "optuna").glob("*.db"))
    assert len(studies) == 3 and {p.name.split("-")[0] for p in studies} == {"ewc", "ewc+replay"}
    for name in runs:
        assert best_value(tmp_path / name) == pytest.approx(own_best(tmp_path / name))
        assert len(list((tmp_path / name).glob("*/summary.json"))) == 2
    assert len({own_best(tmp_path / name) for name in runs}) == 3


def test_a_study_named_for_another_experiment_is_refused_naming_the_difference(tmp_path):
    assert search(tmp_path, "first", "method=ewc", "hydra.sweeper.study_name=mine").returncode == 0
    done = search(tmp_path, "second", "method=ewc", "plus=[replay]", "hydra.sweeper.study_name=mine")
    assert done.returncode != 0 and "the study is the search of another experiment" in done.stderr
    assert "plus.replay" in done.stderr and not (tmp_path / "second" / "0").exists()
    again = search(tmp_path, "again", "method=ewc", "hydra.sweeper.study_name=mine", "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr  # the same search continues its study
