"""A saved config is data (issue 24, findings 3, 4 and 6's reading limits): it reads nothing outside its file,
calls a target only where the config folders put one, and costs no more than a config costs to read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cl_bench.engine.run import resumed_config, run_experiment
from cl_bench.records.run_folder import saved_config_path
from cl_bench.records.saved_config import UnsafeConfig, read_saved_config, resolvers_called, targets_of
from cl_bench.report.make import make_report, write_report
from tests.helpers.config import TINY

SECRET = "hunter2-do-not-print"


@pytest.fixture
def finished(make_config, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    assert run_experiment(make_config(TINY), run_dir)["status"] == "ok"
    return run_dir


def edit_saved(run_dir: Path, values: dict[str, object]) -> None:
    """Set dotted keys of the run's saved config, as a user (or an attacker) editing the file would."""
    saved = OmegaConf.load(saved_config_path(run_dir))
    for key, value in values.items():
        OmegaConf.update(saved, key, value, merge=False, force_add=True)
    OmegaConf.save(saved, saved_config_path(run_dir))


def every_output(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix != ".png")


def test_resolvers_are_found_nested_and_quoted():
    assert resolvers_called("${oc.select:a,${oc.env:X}} ${b.c}") == {"oc.select", "oc.env"}
    assert resolvers_called("${x:'${now:%H}'}") == {"x", "now"}
    assert resolvers_called("plain ${seed}") == set()
    assert resolvers_called("${oops") == {"?"}


def test_a_secret_in_a_saved_config_never_reaches_the_report(make_config, tmp_path, monkeypatch, caplog):
    """Finding 3: `note: ${oc.env:SECRET_TOKEN}` printed the variable in a row label and in every report file."""
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    for seed in (0, 1):
        assert run_experiment(make_config(TINY, f"seed={seed}"), tmp_path / "sweep" / str(seed))["status"] == "ok"
    edit_saved(tmp_path / "sweep" / "0", {"note": "${oc.env:SECRET_TOKEN}"})
    text = write_report([tmp_path / "sweep"], tmp_path / "out")
    assert SECRET not in text and SECRET not in every_output(tmp_path / "out") and SECRET not in caplog.text
    assert "note=${oc.env:SECRET_TOKEN} calls oc.env, which reads outside the file" in caplog.text


def test_a_label_that_reads_the_environment_is_shown_as_written_on_resume(make_config, finished, monkeypatch):
    """Finding 3: on `resume=`, `method.label: ${oc.env:...}` put the variable on stdout and in summary.json."""
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    edit_saved(finished, {"method.label": "${oc.env:SECRET_TOKEN}"})
    summary = run_experiment(make_config(TINY, f"resume={finished}"), finished, override_keys=["resume"])
    assert summary["status"] == "ok", summary.get("error")
    assert summary["method"] == "${oc.env:SECRET_TOKEN}"
    assert SECRET not in (finished / "summary.json").read_text()


def test_an_experiment_key_that_reads_outside_the_file_is_refused_naming_it(make_config, finished):
    edit_saved(finished, {"seed": "${now:%S}"})
    summary = run_experiment(make_config(TINY, f"resume={finished}"), finished, override_keys=["resume"])
    assert summary["status"] == "refused" and "seed=${now:%S} calls now" in summary["error"]


def test_a_key_that_says_where_a_run_is_done_takes_the_invocations_own_value(make_config, finished, monkeypatch):
    """conf/logger/wandb.yaml's `mode: ${oc.env:WANDB_MODE,online}` resumes as the invocation's own config
    says; another key reading the environment is refused unless the command line gives it."""
    edit_saved(finished, {"logger": OmegaConf.to_container(make_config(TINY, "logger=wandb").logger, resolve=False)})
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config, _ = resumed_config(make_config(TINY, "logger=wandb", f"resume={finished}"), ["resume", "logger"])
    assert config.logger.mode == "disabled"
    edit_saved(finished, {"data_dir": "${oc.env:HOME}/data"})
    with pytest.raises(UnsafeConfig, match=r"data_dir=\$\{oc.env:HOME\}/data in the run's config reads outside it"):
        resumed_config(make_config(TINY, "logger=wandb", f"resume={finished}"), ["resume", "logger"])
    given = make_config(TINY, "logger=wandb", f"resume={finished}", "data_dir=/data")
    config, _ = resumed_config(given, ["resume", "logger", "data_dir"])
    assert config.data_dir == "/data"


@pytest.mark.parametrize(("key", "node", "message"), [
    # Finding 4: a target of conf/ (Optuna's storage) nested as a data set's split_seed made folders on resume=.
    ("dataset.split_sklearn_digits.split_seed", "sqlite_url", "no config folder puts a target there"),
    ("logger", "sqlite_url", "is not an allowed target there"),
    ("method", "sqlite_url", "is not an allowed target there"),
    ("logger", "cl_bench.methods.ewc.EWC", "is not an allowed target there"),
    ("model", "builtins.open", "is not an allowed target there"),
])
def test_a_target_is_accepted_only_where_the_configs_put_one(make_config, finished, tmp_path, key, node, message):
    made = tmp_path / "made" / "by" / "the" / "config"
    target = "cl_bench.cli.optuna_study.sqlite_url" if node == "sqlite_url" else node
    edit_saved(finished, {key: {"_target_": target, "path": str(made / "x.db")}})
    summary = run_experiment(make_config(TINY, f"resume={finished}"), finished, override_keys=["resume"])
    assert summary["status"] == "refused" and message in summary["error"] and key in summary["error"]
    assert not (tmp_path / "made").exists()


def test_a_torch_class_of_the_places_kind_is_accepted(make_config, finished):
    """`optimizer._target_=torch.optim.RMSprop` given on a run's command line resumes; a module is not a class."""
    saved = read_saved_config(saved_config_path(finished)).config
    edit_saved(finished, {"optimizer": {**OmegaConf.to_container(saved.optimizer), "_target_": "torch.optim.RMSprop"}})
    assert read_saved_config(saved_config_path(finished)).config.optimizer._target_ == "torch.optim.RMSprop"
    edit_saved(finished, {"optimizer._target_": "torch.nn.Linear"})
    with pytest.raises(UnsafeConfig, match="optimizer._target_=torch.nn.Linear is not an allowed target there"):
        read_saved_config(saved_config_path(finished))
    assert ("optimizer", "torch.nn.Linear") in targets_of({"optimizer": {"_target_": "torch.nn.Linear"}})


def test_a_yaml_alias_bomb_is_refused_at_once(finished, tmp_path, caplog):
    """Finding 6: five lines of aliases in a saved config cost 40 s and 750 MB (each level ×10)."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{c}: &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    saved_config_path(finished).write_text(saved_config_path(finished).read_text() + "\n".join(levels) + "\n")
    started = time.perf_counter()
    with pytest.raises(UnsafeConfig, match="uses YAML aliases"):
        read_saved_config(saved_config_path(finished))
    with pytest.raises(FileNotFoundError, match="no readable cl_bench runs"):
        make_report([finished], tmp_path / "out")
    assert time.perf_counter() - started < 5 and "uses YAML aliases" in caplog.text


def test_a_fifo_in_a_run_folder_never_hangs_the_report(finished, tmp_path):
    """Finding 6: a FIFO named summary.json hung cl-bench-report forever."""
    (finished / "summary.json").unlink()
    os.mkfifo(finished / "summary.json")
    command = [sys.executable, "-m", "cl_bench.cli.report", str(finished), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "summary.json: not a regular file" in done.stdout  # its job listed as unreadable under the table


def test_a_fifo_as_a_saved_config_never_hangs_a_resume(make_config, finished):
    path = saved_config_path(finished)
    path.unlink()
    os.mkfifo(path)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(run_experiment(
        make_config(TINY, f"resume={finished}"), finished, override_keys=["resume"])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert result["status"] == "refused" and "not a cl_bench run folder" in result["error"]


def test_an_oversized_saved_config_is_refused(finished):
    path = saved_config_path(finished)
    path.write_text(path.read_text() + "padding: " + "x" * 1_100_000 + "\n")
    with pytest.raises(ValueError, match="larger than 1,000,000 bytes"):
        read_saved_config(path)


def test_the_summary_json_of_a_refused_config_is_never_read(finished, tmp_path, caplog):
    edit_saved(finished, {"seed": "${oc.env:HOME}"})
    json.loads((finished / "summary.json").read_text())
    with pytest.raises(FileNotFoundError):
        make_report([finished], tmp_path / "out")
    assert "seed=${oc.env:HOME} calls oc.env" in caplog.text
