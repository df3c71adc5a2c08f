"""cl_bench as a library (issue 26): the functions of cl_bench/api.py on the command line's code paths, and what a
run from Python does with its process (Ctrl-C, exit, logging, working directory)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import cl_bench
from cl_bench.core.errors import ConfigError
from cl_bench.report.make import read_report_csv
from tests.helpers.cli import cl_bench as command_line
from tests.helpers.config import TINY


def test_a_run_from_a_fresh_interpreter_outside_the_repository(tmp_path):
    """Issue 26's own check, as a user types it."""
    code = "import cl_bench; r = cl_bench.run(['+debug=tiny']); print(r.score, r.accuracy_matrix.shape)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    score, shape = done.stdout.split(maxsplit=1)
    assert 0 < float(score) <= 1 and shape.strip() == "(2, 2)"
    (folder,) = (tmp_path / "outputs" / "runs").glob("*/*")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["score"] == float(score)  # the run folder cl-bench writes


def test_a_run_writes_the_command_lines_folder_and_reads_as_the_report_does(tmp_path):
    run = cl_bench.run([TINY, "method=ewc", f"output_root={tmp_path / 'out'}"], folder=tmp_path / "ewc")
    assert run.status == "ok" and run.summary["method"] == "EWC" and run.score == run.summary["score"]
    for name in (".cl_bench/config.yaml", ".cl_bench/hydra.yaml", ".hydra/overrides.yaml", "metrics.jsonl"):
        assert (tmp_path / "ewc" / name).exists(), name
    matrix = run.accuracy_matrix
    assert matrix.shape == (2, 2) and matrix.to_numpy().tolist() == run.summary["accuracy_matrix"]
    curves = run.curves()
    assert set(curves.columns) == {"step", "trained", "task", "kind", "value"}
    metrics = run.metrics
    first = run.tasks[0]
    by_hand = metrics[["step", f"val/{first}"]].dropna()
    mine = curves[(curves.task == first) & (curves.kind == "scenario")]
    assert mine.value.tolist() == by_hand[f"val/{first}"].tolist() and mine.step.tolist() == by_hand.step.tolist()
    assert run.figure().axes  # a matplotlib Figure of the curves
    report = command_line(tmp_path, f"resume={tmp_path / 'ewc'}")  # the command line continues the run's folder
    assert report.returncode == 0, report.stderr


def test_compose_refuses_what_the_command_line_refuses():
    with pytest.raises(ConfigError, match="method.lambda=-1: must be a finite number ≥ 0"):
        cl_bench.compose(["method=ewc", "method.lambda=-1"])
    with pytest.raises(ConfigError, match="lr=-1: must be > 0"):
        cl_bench.compose(["lr=-1"])
    with pytest.raises(ConfigError, match="plus=\\[replay,replay\\]: replay is listed twice"):
        cl_bench.compose(["plus=[replay,replay]"])


def test_a_failed_run_returns_and_a_refused_one_raises(tmp_path):
    failed = cl_bench.run([TINY, "method._target_=tests.helpers.NaNAtStep", "+method.step=5"], folder=tmp_path / "nan")
    assert failed.status == "failed" and "NaN" in failed.summary["error"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(cl_bench.RunRefused, match="holds files that no cl_bench run made"):
        cl_bench.run([TINY], folder=tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_run_leaves_logging_and_the_working_directory_as_it_found_them(tmp_path):
    root = logging.getLogger()
    before = (list(root.handlers), root.level, os.getcwd(), logging.getLogger("cl_bench").level)
    cl_bench.run([TINY], folder=tmp_path / "run")
    assert (list(root.handlers), root.level, os.getcwd(), logging.getLogger("cl_bench").level) == before


CTRL_C = """
import sys
import cl_bench
try:
    cl_bench.run(["+debug=tiny", "logger._target_=tests.helpers.SignalAtRow", "+logger.row=5",
                  "+logger.signum=2"], folder=sys.argv[1])
except KeyboardInterrupt as stop:
    print("KeyboardInterrupt:", stop)
"""


def test_ctrl_c_checkpoints_then_raises_keyboard_interrupt_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", CTRL_C, str(run_dir)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "KeyboardInterrupt:" in done.stdout and "resume=" in done.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))
    saved = run_dir / ".cl_bench" / "config.yaml"
    saved.write_text(saved.read_text().replace("tests.helpers.SignalAtRow", "cl_bench.loggers.base.RunLogger")
                     .replace("  row: 5\n", "").replace("  signum: 2\n", ""))
    resumed = cl_bench.run([f"resume={run_dir}"])
    assert resumed.status == "ok" and resumed.summary["resumed_from"]
    assert signal.getsignal(signal.SIGINT) is not None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api")
    done = command_line(folder, "method=baseline,ewc", "seed=0,1", f"hydra.sweep.dir={folder / 'sweep'}",
                        multirun=True)
    assert done.returncode == 0, done.stderr
    return folder / "sweep"


def test_the_table_is_the_reports_value_for_value(sweep):
    assert cl_bench.table(sweep).to_csv(index=False) == (sweep / "report.csv").read_text()
    pd.testing.assert_frame_equal(read_report_csv(sweep / "report.csv"), read_back(cl_bench.table(sweep)))


def read_back(table: pd.DataFrame) -> pd.DataFrame:
    """`table` as report.csv holds it, read back as the report reads it."""
    return pd.read_csv(io.StringIO(table.to_csv(index=False)), keep_default_na=False, na_values=[""])


def test_runs_is_every_summary(sweep):
    frame = cl_bench.runs(sweep).set_index("folder")
    summaries = {str(path.parent): json.loads(path.read_text()) for path in sweep.glob("*/summary.json")}
    assert set(frame.index) == set(summaries) and len(frame) == 4
    for folder, summary in summaries.items():
        row = frame.loc[folder]
        for key in ("status", "score", "score_test", "seed", "lr", "average_final_accuracy", "train_steps"):
            assert row[key] == summary[key], key
        assert row["score_k.A"] == summary["score_k"]["A"]
    assert set(frame["method._target_"]) == {"cl_bench.methods.baseline.Baseline", "cl_bench.methods.ewc.EWC"}


def test_the_report_prints_each_format(sweep, tmp_path):
    def printed(form: str) -> str:
        command = ["cl-bench-report", str(sweep), "--out", str(tmp_path / form), "--format", form]
        done = subprocess.run([Path(sys.executable).with_name(command[0]), *command[1:]], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert printed("csv").strip() == (tmp_path / "csv" / "report.csv").read_text().strip()
    assert json.loads(printed("json")) == json.loads(cl_bench.table(sweep).to_json(orient="records"))
    assert printed("markdown").strip() == (tmp_path / "markdown" / "report.md").read_text().strip()
    latex = printed("latex")
    table = cl_bench.table(sweep).set_index("Technique")
    best = table.score.idxmax()
    mean, std = 100 * table.score[best], 100 * table.score_std[best]
    assert f"{best} & \\bfseries {mean:.1f} $\\pm$ {std:.1f}" in latex
    assert "\\toprule" in latex and "& n \\\\" in latex and "Val Score\\_A" in latex
    assert f"{100 * table.score[best]:.2f}" in cl_bench.paper_table(sweep, precision=2).to_latex()
