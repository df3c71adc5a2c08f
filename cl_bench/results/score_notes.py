"""What the report's Score table says about its Scores besides their values, as lines under the table: the rows
whose Score follows the window with the last task's step 0 (`score.window=with_start`, results/metrics.py), the
rows whose test Score is unknown (results/rescore.py), and the rows whose Score is not informative: its point is
the last task's step 0 (the model before any update on it, the same for every method), or the last task's
accuracy there is at chance (metrics.at_chance, among the units its prediction chooses from)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cl_bench.engine.evaluation import TASK_AWARE
from cl_bench.engine.run import TASKS_FILE
from cl_bench.engine.scenario import Scenario
from cl_bench.results.metrics import CHANCE_STANDARD_ERRORS, WITH_START, at_chance


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
        tasks = json.loads((run_dir / TASKS_FILE).read_text())
        scenario = Scenario(summary["scenario"], [len(task["classes"]) for task in tasks])
        units = scenario.units_predicted_among(len(tasks) - 1, task_aware=summary["accuracy"] == TASK_AWARE)
        accuracy = list(summary["score_k"].values())[-1]
        return at_chance(accuracy, units, tasks[-1]["split_sizes"]["val"])
    except (OSError, ValueError, LookupError, TypeError, ZeroDivisionError):
        return None


def chosen_runs(row: pd.Series, runs: pd.DataFrame) -> pd.DataFrame:
    """The ok runs a table row's figures are the statistics of: its experiment's, with its chosen weights."""
    same = (runs.identity == row.identity) & (runs.version == row.version) & (runs.params == row.get("params"))
    return runs[same & (runs.status == "ok")]


def _rows_where(table: pd.DataFrame, runs: pd.DataFrame, flag: str) -> list[str]:
    """The table rows with a chosen run whose `flag` holds, as `Technique` (and its sequence when the table has
    several), with "k of n seeds" unless all."""
    several_sequences = table[["sequence", "scenario"]].drop_duplicates().shape[0] > 1
    named = []
    for _, row in table[table.status == "ok"].iterrows():
        chosen = chosen_runs(row, runs)
        flagged = int(chosen[flag].eq(True).sum()) if flag in chosen else 0  # None, NaN: not known
        if flagged:
            name = row.Technique + (f" on {row.sequence} ({row.scenario}-IL)" if several_sequences else "")
            named.append(name + ("" if flagged == len(chosen) else f" ({flagged} of {len(chosen)} seeds)"))
    return named


def blank_unknown_tests(table: pd.DataFrame, runs: pd.DataFrame, test: str) -> None:
    """Empty the `test` column (and its spreads) of the rows with a chosen run whose test Score is unknown: the
    other seeds' mean would stand for all of them."""
    for index, row in table[table.status == "ok"].iterrows():
        chosen = chosen_runs(row, runs)
        if "test_unknown" in chosen and chosen.test_unknown.eq(True).any():
            for column in (test, f"{test}_std", f"{test}_sem"):
                table.loc[index, column] = math.nan


def score_notes(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The lines under a Score table about its rows' windows, unknown test Scores and uninformative Scores; ""
    when there is nothing to say."""
    notes = []
    if with_start := _rows_where(table, runs, "with_start"):
        others = "" if len(with_start) == (table.status == "ok").sum() else "; from its first update on in the others"
        notes.append(f"Score over the last task's points from its step 0 (score.window={WITH_START}) in "
                     f"{', '.join(with_start)}{others}.")
    if unknown := _rows_where(table, runs, "test_unknown"):
        notes.append(f"Test Score unknown in {', '.join(unknown)}: made before score.window existed, with the Score "
                     f"at the last task's step 0; over its training the Score is at another point, whose model was "
                     f"not kept (run again for a test Score).")
    if at_start := _rows_where(table, runs, "at_start"):
        notes.append(f"Not informative: the Score is at the last task's step 0 (the model before any update on it, "
                     f"the same for every method) in {', '.join(at_start)}.")
    if at_chance_rows := _rows_where(table, runs, "at_chance"):
        notes.append(f"Not informative: the last task's accuracy at the Score's point is at chance (within "
                     f"{CHANCE_STANDARD_ERRORS} standard errors of a uniform guess) in {', '.join(at_chance_rows)}.")
    return "".join(f"\n{note}\n" for note in notes)
