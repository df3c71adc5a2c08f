"""How a sweep ends (issue 24, findings 8 and 9): its exit code reads the jobs' statuses through the report's
own reader, wherever the jobs' folders are; a sweep of no job says so and exits non-zero; publishing the
report to W&B never raises."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import OmegaConf

from cl_bench.loggers.wandb_report import publish_report
from tests.helpers.cli import cl_bench

SMALL = ["first_task.steps=20", "steps=20"]


def test_a_sweep_of_no_job_says_so_and_exits_non_zero(tmp_path):
    """Finding 8: `-m 'seed=range(0,0)'` launched nothing, wrote no report and exited 0."""
    done = cl_bench(tmp_path, *SMALL, "seed=range(0,0)", f"hydra.sweep.dir={tmp_path / 'sweep'}", multirun=True)
    assert done.returncode != 0 and "the sweep has no job" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_job_in_a_nested_folder_fails_the_sweep(tmp_path):
    """Finding 9: the exit code counted jobs at `*/.hydra/config.yaml` one level down while the report searched
    every level: a nested `hydra.sweep.subdir` exited 0 after failures."""
    sweep = tmp_path / "sweep"
    done = cl_bench(tmp_path, *SMALL, "lr=-1,0.001", f"hydra.sweep.dir={sweep}",
                    "hydra.sweep.subdir=by_lr/${hydra.job.num}", multirun=True)
    assert done.returncode != 0 and "1 of 2 jobs did not end ok (1 failed)" in done.stderr
    assert (sweep / "by_lr" / "0" / "summary.json").exists() and "**failed**" in (sweep / "report.md").read_text()


def test_publishing_the_report_to_wandb_never_raises(tmp_path, caplog):
    """Finding 9: the publisher, documented as never raising, made its logger outside its guard."""
    config = OmegaConf.create({"logger": {"_target_": "cl_bench.loggers.wandb.WandbLogger", "no_such_key": 1}})
    with caplog.at_level(logging.WARNING):
        publish_report(config, tmp_path, pd.DataFrame({"Technique": ["EWC"]}))
    assert "W&B report not logged" in caplog.text
