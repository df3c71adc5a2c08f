"""Bad input gets a clear message; NaN stops at a boundary; signals checkpoint; resume is exact."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cl_bench.core.errors import ConfigError
from cl_bench.engine.run import run_experiment
from cl_bench.engine.validate import validate_config
from cl_bench.records.checkpoint import load_checkpoint, write_checksummed
from cl_bench.records.run_folder import saved_config_path
from tests.helpers.config import TINY
from tests.helpers.runs import COMPARED, tiny_run


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=0", "lr=0: must be > 0"),
        ("lr=-0.1", "lr=-0.1: must be > 0"),
        ("first_task.lr=-1", "first_task.lr=-1: must be > 0"),
        ("eval_every=0", "eval_every=0: must be > 0"),
        ("batch_size=abc", "batch_size='abc': must be a positive integer"),
        ("epochs=2", "steps=30, epochs=2: set exactly one of them"),
        ("scenario=joint", "scenario='joint': choose one of task, domain, class"),
        ("seed=???", "mandatory value(s) not set: seed"),
        ("model.hidden=???", "mandatory value(s) not set: model.hidden"),
        ("checkpoint.every=-5", "checkpoint.every=-5: must be > 0"),
    ],
)
def test_bad_config_values_are_named(make_config, override, message):
    cfg = make_config(TINY, override)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=kd", "method.T=0"], "method.T=0: must be a finite number > 0"),
        (["method=kd", "method.T=inf"], "method.T=inf: must be a finite number > 0"),
        (["method=kd", "method.kappa=-1"], "method.kappa=-1: must be a finite number ≥ 0"),
        (["method=kd", "method.kappa=nan"], "method.kappa=nan: must be a finite number ≥ 0"),
        (["method=ewc", "method.lambda=-3"], "method.lambda=-3"),
        (["method=ewc", "method.fisher_samples=100000"], "method.fisher_samples=100000: task 'split_sklearn_digits.0' has only 606 training examples; choose at most 606"),
        (["method=ewc", "method.fisher_label=maybe"], "method.fisher_label='maybe'"),
        (["method=ewc", "+method.lamda=3"], "method.lamda: EWC takes no such parameter (it takes: lambda,"),
        (["dataset.split_sklearn_digits.splits=[[0,2,2],[1,3]]"], "repeated: [2]"),
        (["dataset.split_sklearn_digits.splits=[[0,2],[1,12]]"], "unknown: [12]"),
    ],
)
def test_bad_method_and_data_settings_fail_before_training(tmp_path, overrides, message):
    summary, run_dir = tiny_run(tmp_path, *overrides, name="bad")
    assert summary["status"] == "failed" and message in summary["error"], summary.get("error")
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir())
    assert "train_steps" not in summary


def test_an_unknown_method_names_the_choices(make_config):
    with pytest.raises(Exception, match="Could not find 'method/ewx'") as error:
        make_config("method=ewx")
    assert "ewc" in str(error.value) and "kd" in str(error.value)


THREE_SPLITS = "[[0,1,2],[3,4,5],[6,7,8,9]]"


@pytest.mark.parametrize(
    "method",
    [
        ["method=baseline"],
        ["method=ewc", "method.fisher_label=sample"],  # Fisher, anchors and the label-sampling stream restored
        ["method=ewc", "method.mode=sum", "dataset=permuted_sklearn_digits", "dataset.permuted_sklearn_digits.n_tasks=3"],
        ["method=ewc", "method.mode=online", "scenario=class", "optimizer_state=carry"],  # grown head, carried Adam
        ["method=kd", "method.teacher=recorded"],  # the recorded teacher outputs restored
        ["method=kd", "method.teacher=live"],  # the frozen teacher model restored
        ["method=replay"],  # the exemplar memory restored
        ["method=si", "method.c=1000", "scenario=class"],  # Ω, θ*, the running path integral (grown head)
        ["method=mas", "method.lambda=100", "scenario=class"],  # Ω, θ* (grown head)
        ["method=kd", "plus=[replay,si]", "scenario=class"],  # each part's state (methods/compose.py)
        ["method=agem", "scenario=class", "checkpoint.every=7"],  # the episodic memory
        ["method=derpp", "scenario=class", "checkpoint.every=7"],  # the reservoir buffer filling in task A, its logits
        ["method=icarl", "scenario=class"],  # teacher, herding memory, the nearest-mean classifier's exemplars
        ["method=gem", "scenario=class", "checkpoint.every=7"],  # the episodic memory of each task
        # the generator and its Adam (the method's own model), its frozen copy: three tasks, so that what the
        # generator learns in task B is replayed in task C
        ["method=dgr", "scenario=class", f"dataset.split_sklearn_digits.splits={THREE_SPLITS}"],
        ["method=dgr", "method.targets=soft", "scenario=task", f"dataset.split_sklearn_digits.splits={THREE_SPLITS}"],
        ["method=rtf", "model=vae", "scenario=domain"],  # the model is the VAE: replay through its own decoder
    ],
    ids=[
        "baseline", "ewc", "ewc-sum-3-tasks", "ewc-online-class-il", "kd-recorded", "kd-live", "replay", "si", "mas",
        "kd+replay+si", "agem", "derpp", "icarl", "gem", "dgr", "dgr-distill-task-il", "rtf",
    ],
)
@pytest.mark.parametrize("stop_row", [2, 6])  # inside task A, inside task B
def test_stopped_by_a_signal_and_resumed_equals_uninterrupted(make_config, tmp_path, method, stop_row):
    common = [*method, "first_task.cache=false", "model.dropout=0.1"]
    whole, whole_dir = tiny_run(tmp_path, *common, name="whole")
    stopped, stopped_dir = tiny_run(
        tmp_path, *common, "logger._target_=tests.helpers.SignalAtRow", f"+logger.row={stop_row}", name="stopped"
    )
    assert stopped["status"] == "interrupted" and "resume=" in stopped["error"]
    assert list((stopped_dir / "checkpoints").glob("ckpt-*.pt"))
    # the run's config as it would be had the signal come from outside (no test logger in it)
    OmegaConf.save(make_config(TINY, *common), saved_config_path(stopped_dir))
    resumed = run_experiment(make_config(TINY, *common, f"resume={stopped_dir}"), tmp_path)
    assert resumed["status"] == "ok", resumed.get("error")
    assert "resumed_from" in resumed
    for key in COMPARED:
        assert json.dumps(resumed[key]) == json.dumps(whole[key]), key  # NaN (a task not yet seen) equal too
    assert (stopped_dir / "metrics.jsonl").read_text() == (whole_dir / "metrics.jsonl").read_text()


def test_nan_loss_stops_at_the_next_boundary_keeping_metrics(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "method._target_=tests.helpers.NaNAtStep", "+method.step=15", name="nan")
    assert summary["status"] == "failed"
    assert "NonFiniteLoss" in summary["error"] and "between global steps 11 and 20" in summary["error"]
    metrics = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    assert metrics["step"].tolist() == [0, 10]  # the rows before the NaN are kept
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Exploit()}, path)
    with pytest.raises(ValueError, match="not a safe cl_bench checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    # with a checksum that verifies (anyone can compute one), so that the unpickler itself must refuse it
    write_checksummed(pickle.dumps({"model": Exploit()}), path)
    with pytest.raises(ValueError, match="not a safe"):
        load_checkpoint(path)


def test_first_task_is_trained_once_and_reused_identically(tmp_path):
    first, first_dir = tiny_run(tmp_path, name="first")
    second, second_dir = tiny_run(tmp_path, "lr=0.0001", name="second")
    uncached, uncached_dir = tiny_run(tmp_path, "lr=0.0001", "first_task.cache=false", name="uncached")
    assert (first["first_task_cached"], second["first_task_cached"]) == (False, True)
    task_a = lambda d: pd.read_json(d / "metrics.jsonl", lines=True).query("task == 0")  # noqa: E731
    pd.testing.assert_frame_equal(task_a(first_dir), task_a(second_dir))
    # and the rest of the run is exactly what training task A in-process gives
    assert (second_dir / "metrics.jsonl").read_text() == (uncached_dir / "metrics.jsonl").read_text()
    assert second["train_steps"] == 30  # task B only: A's cost is not counted here


def test_parallel_jobs_train_the_first_task_once(tmp_path):
    common = [f"output_root={tmp_path / 'out'}", TINY, "first_task.steps=200"]
    jobs = [
        subprocess.Popen([sys.executable, "-m", "cl_bench.cli.app", *common, f"lr={lr}"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for lr in (0.001, 0.0001)
    ]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*/*/summary.json")]
    assert sorted(s["first_task_cached"] for s in summaries) == [False, True]
    assert len(list((tmp_path / "out" / "cache" / "first_task").glob("*.pt"))) == 1


def test_a_run_folder_of_an_earlier_cl_bench_is_not_resumed(make_config, tmp_path):
    """Before 0.2 each task started a fresh optimiser and EWC's mode=online meant today's mode=sum:
    continuing such a folder would mix two meanings in one result."""
    common = [TINY, "first_task.cache=false"]
    stopped, stopped_dir = tiny_run(
        tmp_path, "first_task.cache=false", "logger._target_=tests.helpers.SignalAtRow", "+logger.row=2", name="stopped"
    )
    assert stopped["status"] == "interrupted"
    (checkpoint,) = (stopped_dir / "checkpoints").glob("ckpt-*.pt")
    state = load_checkpoint(checkpoint)
    del state["format"]  # as 0.1 wrote it (without a checksum)
    torch.save(state, checkpoint)
    continued = run_experiment(make_config(*common), stopped_dir)
    assert continued["status"] == "failed" and "IncompatibleState" in continued["error"]
    assert "cl_bench 0.1 or older" in continued["error"] and "start a new run folder" in continued["error"]
    shutil.rmtree(stopped_dir / ".cl_bench")  # a folder of cl_bench < 0.3 has only Hydra's record of its config
    (stopped_dir / ".hydra").mkdir()
    OmegaConf.save(make_config(*common), stopped_dir / ".hydra" / "config.yaml")
    resumed = run_experiment(make_config(*common, f"resume={stopped_dir}"), tmp_path / "own")
    assert resumed["status"] == "refused" and "made by an earlier cl_bench (before 0.3)" in resumed["error"]
