"""Tiny runs in-process, and what a run's result is when two runs are compared."""

from __future__ import annotations

from pathlib import Path

from cl_bench.engine.run import run_experiment
from cl_bench.records.figure_worker import CurveFigure
from tests.helpers.config import TINY, compose_config

# The summary keys that make a run's result: equal in two runs that computed the same thing.
COMPARED = ("score", "score_k", "score_step", "score_test", "accuracy_matrix", "val_accuracy_matrix", "bwt")


def tiny_run(
    tmp_path: Path, *overrides: str, name: str = "run", figure: CurveFigure | None = None
) -> tuple[dict, Path]:
    """`cl-bench +debug=tiny <overrides>` in this process, into run folder tmp_path/name (outputs and
    data_dir under tmp_path, as the make_config fixture composes): (its summary, the folder)."""
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(TINY, *overrides, output_root=tmp_path / "outputs", data_dir=tmp_path / "data")
    return run_experiment(cfg, run_dir, figure), run_dir
