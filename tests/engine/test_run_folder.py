"""A run folder belongs to one config and one process; a sweep always ends with its report and an
exit code that says whether it completed; saved configs are data, not code (issue 13's findings)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cl_bench.engine.run import run_experiment
from cl_bench.records.checkpoint import load_checkpoint, save_checkpoint
from cl_bench.records.run_folder import RunLock, saved_config_path
from tests.helpers.cli import cl_bench
from tests.helpers.config import TINY

SMALL = ["first_task.steps=20", "steps=20"]  # on top of +debug=tiny (tests.helpers.cli): 20-step tasks


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))}


def test_a_sweep_rerun_with_other_configs_into_its_folder_is_refused_before_any_job(tmp_path):
    """Finding 1: `method=kd,l2` into the folder of `method=baseline,ewc` showed Baseline's and EWC's
    numbers labelled KD and L2."""
    sweep = tmp_path / "sweep"
    first = cl_bench(tmp_path, *SMALL, "method=baseline,ewc", f"hydra.sweep.dir={sweep}", multirun=True)
    assert first.returncode == 0, first.stderr
    before = {name: s["score"] for name, s in summaries(sweep).items()}
    saved_hydra = (sweep / "0" / ".hydra" / "config.yaml").read_text()

    other = cl_bench(tmp_path, *SMALL, "method=kd,l2", f"hydra.sweep.dir={sweep}", multirun=True)
    assert other.returncode != 0
    assert "holds runs of other configs; no job was started" in other.stderr and "job 0" in other.stderr
    assert "method" in other.stderr and "Traceback" not in other.stderr
    assert {name: s["score"] for name, s in summaries(sweep).items()} == before
    assert (sweep / "0" / ".hydra" / "config.yaml").read_text() == saved_hydra

    again = cl_bench(tmp_path, *SMALL, "method=baseline,ewc", f"hydra.sweep.dir={sweep}", multirun=True)
    assert again.returncode == 0, again.stderr  # the same sweep continues (here: its finished runs)
    assert {name: s["score"] for name, s in summaries(sweep).items()} == before


def test_a_finished_run_folder_refuses_another_method_and_keeps_its_hydra_files(tmp_path):
    run_dir = tmp_path / "run"
    assert cl_bench(tmp_path, *SMALL, f"hydra.run.dir={run_dir}").returncode == 0
    hydra_config = (run_dir / ".hydra" / "config.yaml").read_text()
    summary = (run_dir / "summary.json").read_text()

    done = cl_bench(tmp_path, *SMALL, f"hydra.run.dir={run_dir}", "method=kd")
    assert done.returncode != 0
    assert "holds a run of another config: method=KD (the run has Baseline)" in done.stderr
    assert f"cl-bench resume={run_dir}" in done.stderr and "Traceback" not in done.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == hydra_config  # put back after Hydra rewrote it
    assert (run_dir / "summary.json").read_text() == summary


def test_a_config_error_does_not_bind_the_folder(make_config, tmp_path):
    """A run that failed validation computed nothing: the fixed config may start in its folder."""
    run_dir = tmp_path / "run"
    assert run_experiment(make_config(TINY, "lr=-1"), run_dir)["status"] == "failed"
    assert not saved_config_path(run_dir).exists()
    assert run_experiment(make_config(TINY), run_dir)["status"] == "ok"


def test_a_second_process_in_a_run_folder_is_refused_naming_the_holder(make_config, tmp_path):
    """Finding 2: two resumes at once both trained, metrics.jsonl ended with duplicate rows."""
    run_dir = tmp_path / "run"
    assert run_experiment(make_config(TINY), run_dir)["status"] == "ok"
    rows = (run_dir / "metrics.jsonl").read_text()
    with RunLock(run_dir):
        second = run_experiment(make_config(TINY, f"resume={run_dir}"), tmp_path / "own")
    assert second["status"] == "refused"
    assert f"in use by another cl-bench process (PID {os.getpid()})" in second["error"]
    assert (run_dir / "metrics.jsonl").read_text() == rows


def test_two_resumes_at_once_one_is_refused(tmp_path):
    """The fault-injection matrix's two processes on one folder, as users start them."""
    run_dir = tmp_path / "run"
    started = cl_bench(tmp_path, *SMALL, "steps=20000", "eval_every=1000", f"hydra.run.dir={run_dir}",
                       "+logger.row=1", "logger._target_=tests.helpers.SignalAtRow")
    assert "interrupted" in started.stderr
    saved = OmegaConf.load(saved_config_path(run_dir))
    saved.logger = {"_target_": "cl_bench.loggers.base.RunLogger"}  # the run's own test logger would stop it again
    OmegaConf.save(saved, saved_config_path(run_dir))
    command = [sys.executable, "-m", "cl_bench.cli.app", f"resume={run_dir}"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run_dir / ".cl_bench" / "lock.owner").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode != 0 and f"PID {first.pid}" in second.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(zip(steps, range(len(steps)))))


def test_resume_refuses_overrides_that_change_the_experiment_and_takes_the_others(make_config, tmp_path):
    """Finding 7: `resume=X method=ewc steps=50000` ignored its overrides without a word."""
    run_dir = tmp_path / "run"
    stopped = run_experiment(
        make_config(TINY, "logger._target_=tests.helpers.SignalAtRow", "+logger.row=2"), run_dir
    )
    assert stopped["status"] == "interrupted"
    saved = OmegaConf.load(saved_config_path(run_dir))
    saved.logger = {"_target_": "cl_bench.loggers.base.RunLogger"}  # the run's own test logger would stop it again
    OmegaConf.save(saved, saved_config_path(run_dir))

    refused = run_experiment(make_config(TINY, f"resume={run_dir}", "method=ewc", "steps=50000"), tmp_path / "a",
                             override_keys=["resume", "method", "steps"])
    assert refused["status"] == "refused"
    assert "steps=50000 (the run has 30)" in refused["error"] and "method=EWC (the run has Baseline)" in refused["error"]

    same_steps = ["resume", "steps", "threads", "checkpoint.every"]
    resumed = run_experiment(make_config(TINY, f"resume={run_dir}", "threads=2", "checkpoint.every=7"),
                             tmp_path / "b", override_keys=same_steps)
    assert resumed["status"] == "ok", resumed.get("error")
    assert "(2 threads)" in resumed["device"]  # a key that does not change the experiment is taken


def test_a_saved_config_naming_a_foreign_target_is_not_run(make_config, tmp_path):
    """Finding 8: a run folder's config is instantiated on `resume=`; `builtins.open` created a file."""
    run_dir = tmp_path / "run"
    assert run_experiment(make_config(TINY), run_dir)["status"] == "ok"
    victim = tmp_path / "victim"
    saved = OmegaConf.load(saved_config_path(run_dir))
    saved.logger = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    OmegaConf.save(saved, saved_config_path(run_dir))
    refused = run_experiment(make_config(TINY, f"resume={run_dir}"), tmp_path / "own")
    assert refused["status"] == "refused" and "logger._target_=builtins.open is not an allowed target" in refused["error"]
    assert not victim.exists()


def test_resume_of_a_folder_that_is_not_a_run_says_so_and_leaves_no_folder(tmp_path):
    """Finding 10: a traceback, and a stray run folder each time."""
    done = cl_bench(tmp_path, f"resume={tmp_path}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"resume={tmp_path}: not a cl_bench run folder" in done.stderr
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").rglob(".hydra"))


@pytest.mark.parametrize("override, message", [("lr=${nope}", "lr: cannot be resolved"),
                                               ("dataset=[]", "dataset=[]: select at least one dataset")])
def test_interpolation_errors_are_one_line(tmp_path, override, message):
    done = cl_bench(tmp_path, override)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_a_bad_job_fails_alone_and_the_sweep_ends_with_its_report_and_a_non_zero_exit(tmp_path):
    """Finding 5: `lr=${oops},0.001` ended the sweep with a traceback and no report.md."""
    sweep = tmp_path / "sweep"
    done = cl_bench(tmp_path, *SMALL, "lr=${oops},0.001", f"hydra.sweep.dir={sweep}", multirun=True)
    assert done.returncode != 0 and "1 of 2 jobs did not end ok (1 failed)" in done.stderr
    assert [s["status"] for s in summaries(sweep).values()] == ["failed", "ok"]
    report = (sweep / "report.md").read_text()
    assert "lr=${oops}" in report and "cannot be resolved" in report  # the failed job's values are named


def test_ctrl_c_stops_the_sweep_and_the_report_lists_the_jobs_not_run(tmp_path):
    """Finding 6: Ctrl-C stopped only the current job; the next ones started and the exit code was 0."""
    sweep = tmp_path / "sweep"
    done = cl_bench(tmp_path, *SMALL, "method=baseline,lowlr,ewc", f"hydra.sweep.dir={sweep}",
                    "logger._target_=tests.helpers.SignalAtRow", "+logger.row=3", f"+logger.signum={signal.SIGINT}",
                    multirun=True)
    assert done.returncode != 0 and "(1 interrupted, 2 not run)" in done.stderr
    statuses = {name: s["status"] for name, s in summaries(sweep).items()}
    assert statuses == {"0": "interrupted", "1": "not_run", "2": "not_run"}
    assert list((sweep / "0" / "checkpoints").glob("ckpt-*.pt"))  # the current job checkpointed
    assert not (sweep / "1" / "metrics.jsonl").exists()  # the next ones never trained
    assert "not run" in (sweep / "report.md").read_text()


def test_a_single_run_ends_with_its_score_and_folder_and_an_interrupted_one_says_so(tmp_path):
    """Finding 11: a single run printed nothing at the end; the SIGTERM exit said "run failed"."""
    run_dir = tmp_path / "run"
    done = cl_bench(tmp_path, *SMALL, f"hydra.run.dir={run_dir}")
    score = json.loads((run_dir / "summary.json").read_text())["score"]
    assert done.returncode == 0 and f"Score {100 * score:.1f}%" in done.stdout and str(run_dir) in done.stdout
    stopped = cl_bench(tmp_path, *SMALL, f"hydra.run.dir={tmp_path / 'stopped'}",
                       "logger._target_=tests.helpers.SignalAtRow", "+logger.row=2")
    assert stopped.returncode != 0 and "run interrupted" in stopped.stderr and "failed" not in stopped.stderr


def test_wall_time_after_a_resume_covers_every_part(make_config, tmp_path):
    """Finding 11: `wall_time_s` after a resume covered only the last part."""
    run_dir = tmp_path / "run"
    stopped = run_experiment(
        make_config(TINY, "first_task.cache=false", "logger._target_=tests.helpers.SignalAtRow", "+logger.row=6"),
        run_dir,
    )
    assert stopped["status"] == "interrupted"
    (latest,) = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1:]
    state = load_checkpoint(latest)
    assert 0 < state["wall_time_s"] < 1000
    state["wall_time_s"] = 1000.0  # as if the first part had taken 1000 s
    save_checkpoint(state, latest)
    resumed = run_experiment(make_config(TINY, "first_task.cache=false"), run_dir)
    assert resumed["status"] == "ok" and "resumed_from" in resumed
    assert 1000 < resumed["wall_time_s"] < 1100  # the earlier part counts too
