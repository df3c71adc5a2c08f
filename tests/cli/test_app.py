"""The command line as a user runs it: `cl-bench -m ...` ends with the Score table."""

from __future__ import annotations

import json

from tests.helpers.cli import cl_bench


def test_multirun_ends_with_the_score_table(tmp_path):
    done = cl_bench(tmp_path, "method=baseline,lowlr", "steps=60", multirun=True)
    assert done.returncode == 0, done.stderr
    assert "| Baseline |" in done.stdout and "| Baseline (low lr) |" in done.stdout
    sweep = next((tmp_path / "out" / "multirun").glob("*/*"))
    assert (sweep / "report.md").exists() and (sweep / "comparison.png").exists()
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["lr"] for s in summaries] == [0.001, 0.0001]
    baseline = summaries[0]["accuracy_matrix"]
    assert baseline[1][0] < baseline[0][0] - 0.1  # the baseline forgets task A


def test_explicit_lr_wins_over_the_lowlr_preset(tmp_path):
    done = cl_bench(tmp_path, "method=lowlr", "lr=0.01")
    assert done.returncode == 0, done.stderr
    summary = json.loads(next((tmp_path / "out" / "runs").glob("*/*/summary.json")).read_text())
    assert summary["lr"] == 0.01


def test_a_single_failing_run_exits_non_zero_with_the_reason(tmp_path):
    done = cl_bench(tmp_path, "lr=-1")
    assert done.returncode != 0
    assert "lr=-1: must be > 0" in done.stderr
    summary = json.loads(next((tmp_path / "out" / "runs").glob("*/*/summary.json")).read_text())
    assert summary["status"] == "failed"


def test_unknown_method_is_named_with_the_choices(tmp_path):
    done = cl_bench(tmp_path, "method=nope")
    assert done.returncode != 0
    assert "nope" in done.stderr and "baseline" in done.stderr
