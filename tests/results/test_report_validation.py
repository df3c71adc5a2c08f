"""The report validates what it reads (issue 24, finding 6): every number it uses is a finite number in its
range, else the job is "unreadable" with the reason, listed under the table, and the other rows stand; the
label and the grouping come from one record."""

from __future__ import annotations

import json
import math

import pytest

from tests.results.test_report import Sweep, fake_run, row


@pytest.fixture
def sweep(tmp_path) -> Sweep:
    return Sweep(tmp_path / "multirun")


def set_summary(folder, **values) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    summary.update(values)
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize(("value", "reason"), [
    ("0.99", "score='0.99' is not a finite number in [0, 1]"),
    (True, "score=True is not a finite number in [0, 1]"),
    (1e308, "score=1e+308 is not a finite number in [0, 1]"),
    (-0.2, "score=-0.2 is not a finite number in [0, 1]"),
    ([0.5], "score=[0.5] is not a finite number in [0, 1]"),
    (None, "score is missing, though the run ended ok"),  # a NaN Score is written as null
])
def test_a_score_the_report_cannot_use_makes_its_job_unreadable_and_the_rest_stands(sweep, value, reason):
    """`"score": "0.99"` or a list ended the whole report with a pandas traceback; `true` showed 100.0%,
    `1e308` showed inf% and was selected best; a NaN, negative or missing Score dropped the run without a word."""
    sweep.add("method=ewc", "method.lambda=10", score=0.7)
    bad = sweep.add("method=ewc", "method.lambda=100", score=0.6)
    sweep.add("method=kd", score=0.8)
    set_summary(bad, score=value)
    text, table = sweep.report()
    ewc = row(table, "EWC")
    assert ewc.score == pytest.approx(0.7) and ewc.unreadable == 1 and ewc.n == 1
    assert row(table, "KD").score == pytest.approx(0.8)
    assert "Jobs without a result" in text and reason in text and "| unreadable |" in text


def test_a_missing_key_is_unreadable_only_where_the_report_needs_it(sweep):
    job = sweep.add("method=kd")
    summary = json.loads((job / "summary.json").read_text())
    del summary["score"]
    (job / "summary.json").write_text(json.dumps(summary))
    text, _ = sweep.report()
    assert "score is missing, though the run ended ok" in text


@pytest.mark.parametrize(("key", "value"), [
    ("score_k", {"A": "high", "B": 0.5}),
    ("accuracy_matrix", [[0.9, 0.0], [0.5, None]]),  # the last row is every task's final accuracy
    ("accuracy_matrix", [[0.9, 0.0], [0.5, math.inf]]),
    ("wall_time_s", -1.0),
])
def test_every_number_the_report_uses_is_checked(sweep, key, value):
    sweep.add("method=ewc", score=0.7)
    set_summary(sweep.add("method=kd"), **{key: value})
    text, table = sweep.report()
    assert row(table, "KD").status == "unreadable" and key in text
    assert row(table, "EWC").score == pytest.approx(0.7)


def test_an_earlier_row_of_a_matrix_may_hold_a_task_not_yet_seen(sweep):
    """Class-IL with a growing head: task B has no units after task A (NaN, written as null)."""
    set_summary(sweep.add("method=kd"), accuracy_matrix=[[0.9, None], [0.5, 0.6]])
    _, table = sweep.report()
    assert row(table, "KD").status == "ok"


def test_a_summary_that_contradicts_its_config_is_unreadable(sweep):
    """Finding 6: a config that says KD beside a summary that says EWC gave the row
    "EWC · method._target_=cl_bench.methods.kd.KD" (label from one file, grouping from the other)."""
    sweep.add("method=ewc", score=0.7)
    set_summary(sweep.add("method=kd", score=0.9), method="EWC")
    text, table = sweep.report()
    assert list(table.Technique) == ["EWC", "KD"]
    assert row(table, "EWC").score == pytest.approx(0.7) and row(table, "KD").status == "unreadable"
    assert "it says method='EWC', its config 'KD'" in text


def test_a_job_left_out_for_its_config_still_counts(sweep, tmp_path):
    from cl_bench.report.make import make_report

    sweep.add("method=ewc", score=0.7)
    bad = sweep.add("method=kd")
    (bad / ".hydra" / "config.yaml").write_text("a: &a [1]\nb: *a\n")
    report = make_report([sweep.root], sweep.root)
    assert report.statuses == {"ok": 1, "unreadable": 1}


def test_fake_runs_are_what_the_report_accepts(tmp_path):
    """The tests' fake summaries pass the checks (else every report test would test the refusal)."""
    from cl_bench.report.make import make_report

    fake_run(tmp_path / "run", "method=ewc")
    assert make_report([tmp_path / "run"], tmp_path).statuses == {"ok": 1}
