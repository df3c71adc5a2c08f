"""What the report accepts of a run's summary.json, read back as data: every number it uses is a finite number
in its range, and what the summary says the run was agrees with the run's config (the label and the grouping of
a row come from one record). A summary that does not is "unreadable", with the reason."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from cl_bench.records.description import describe

# The report reads these of an ok run's summary: accuracies (fractions), by value, per task, or as matrices.
REQUIRED_OK = ("score",)
ACCURACIES = ("score", "score_test", "average_final_accuracy", "average_final_val_accuracy")
ACCURACIES_PER_TASK = ("score_k", "score_test_k", "final_accuracy_k")
MATRICES = ("accuracy_matrix", "val_accuracy_matrix")
# What the summary says the run was (records.description.describe), compared with its config's.
DESCRIBED = ("method", "lr", "seed", "scenario", "datasets", "model")


def _is_number(value: Any, ok: Callable[[float], bool]) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value)


def _is_accuracy(value: Any) -> bool:
    return _is_number(value, lambda v: 0 <= v <= 1)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number_problem(summary: dict) -> str | None:
    """Why an ok summary's numbers cannot be used, or None: each accuracy a finite number in [0, 1] (in a
    matrix, an earlier row may hold null for a task whose units did not exist yet), the costs finite and ≥ 0."""
    for key in REQUIRED_OK:
        if summary.get(key) is None:
            return f"{key} is missing, though the run ended ok"
    for key in ACCURACIES:
        if key in summary and not _is_accuracy(summary[key]):
            return f"{key}={_shown(summary[key])} is not a finite number in [0, 1]"
    for key in ACCURACIES_PER_TASK:
        values = summary.get(key)
        if values is not None and not (isinstance(values, dict) and all(map(_is_accuracy, values.values()))):
            return f"{key}={_shown(values)} is not a mapping of tasks to numbers in [0, 1]"
    for key in MATRICES:
        rows = summary.get(key)
        if rows is None:
            continue
        if not (isinstance(rows, list) and rows and all(isinstance(row, list) and row for row in rows)):
            return f"{key}={_shown(rows)} is not a matrix of accuracies"
        if not all(_is_accuracy(v) or (v is None and row is not rows[-1]) for row in rows for v in row):
            return f"{key}={_shown(rows)} holds a value that is not a number in [0, 1]"
    if "wall_time_s" in summary and not _is_number(summary["wall_time_s"], lambda v: v >= 0):
        return f"wall_time_s={_shown(summary['wall_time_s'])} is not a finite number ≥ 0"
    if summary.get("steps_per_s") is not None and not _is_number(summary["steps_per_s"], lambda v: v > 0):
        return f"steps_per_s={_shown(summary['steps_per_s'])} is not a finite number > 0"
    return None


def contradiction(summary: dict, described: dict) -> str | None:
    """Where the summary says the run was other than its config says (`described`: records.description.describe of the
    config), or None; keys one of them lacks are not compared (a summary of an earlier version)."""
    for key in DESCRIBED:
        if key in summary and key in described and summary[key] != described[key]:
            return f"it says {key}={_shown(summary[key])}, its config {_shown(described[key])}"
    return None


def summary_problem(summary: dict, config: DictConfig) -> str | None:
    """Why the report cannot use this summary of a run with `config`, or None."""
    if summary.get("status") == "ok":
        problem = number_problem(summary)
        if problem:
            return problem
    return contradiction(summary, describe(config))
