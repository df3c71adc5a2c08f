"""What the report says of one run's Score besides its value (report/notes.py names the rows): whether its window
holds the last task's step 0, whether its test Score is unknown, whether its point is the last task's step 0 (the
model before any update on it, the same for every method), and whether the last task's accuracy there is at chance
(core.score.at_chance, among the units its prediction chooses from)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cl_bench.core.accuracy import TASK_AWARE
from cl_bench.core.files import read_data
from cl_bench.core.layout import TASKS_FILE
from cl_bench.core.scenario import Scenario
from cl_bench.core.score import WITH_START, at_chance

MAX_TASKS_BYTES = 100_000_000  # tasks.json lists image folders' class counts and skipped files


def score_flags(summary: dict, run_dir: Path, window: str, test_unknown: bool) -> dict[str, Any]:
    """A finished run's record fields about its Score: whether its `window` holds the last task's step 0, whether
    its test Score is unknown, whether its point is the last task's step 0 (`at_start`) and whether the last task's
    accuracy there is at chance (None: not known, for a run whose tasks.json cannot be read)."""
    return {
        "with_start": window == WITH_START,
        "test_unknown": test_unknown,
        "at_start": summary.get("score_task_step") == 0,
        "at_chance": _last_task_at_chance(summary, run_dir),
    }


def _last_task_at_chance(summary: dict, run_dir: Path) -> bool | None:
    """Whether the last task's val accuracy at the Score's point is at chance (tasks.json gives the tasks' classes
    and the size of the last task's val split)."""
    try:
        tasks = json.loads(read_data(run_dir / TASKS_FILE, MAX_TASKS_BYTES))
        scenario = Scenario(summary["scenario"], [len(task["classes"]) for task in tasks])
        units = scenario.units_predicted_among(len(tasks) - 1, task_aware=summary["accuracy"] == TASK_AWARE)
        accuracy = list(summary["score_k"].values())[-1]
        return at_chance(accuracy, units, tasks[-1]["split_sizes"]["val"])
    except (OSError, ValueError, LookupError, TypeError, ZeroDivisionError):
        return None
