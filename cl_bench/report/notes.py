"""What the report's Score table says about its Scores besides their values, as lines under the table: the rows
whose Score follows the window with the last task's step 0 (`score.window=with_start`, core/score.py), the rows
whose test Score is unknown (report/rescore.py), and the rows whose Score is not informative (report/flags.py):
its point is the last task's step 0 (the model before any update on it, the same for every method), or the last
task's accuracy there is at chance."""

from __future__ import annotations

import math

from cl_bench.core.score import CHANCE_STANDARD_ERRORS, WITH_START
from cl_bench.report.render import several_sequences
from cl_bench.report.table import Table


def _rows_where(table: Table, flag: str) -> list[str]:
    """The table rows with a chosen run whose `flag` holds, as `Technique` (and its sequence when the table has
    several), with "k of n seeds" unless all."""
    sequences = several_sequences(table.frame)
    named = []
    for (_, row), chosen in zip(table.frame.iterrows(), table.chosen):
        flagged = sum(entry.flags.get(flag) is True for entry in chosen)  # None: not known
        if flagged:
            name = row.Technique + (f" on {row.sequence} ({row.scenario}-IL)" if sequences else "")
            named.append(name + ("" if flagged == len(chosen) else f" ({flagged} of {len(chosen)} seeds)"))
    return named


def blank_unknown_tests(table: Table, test: str) -> None:
    """Empty the `test` column (and its spreads) of the rows with a chosen run whose test Score is unknown: the
    other seeds' mean would stand for all of them."""
    for index, chosen in zip(table.frame.index, table.chosen):
        if any(entry.flags.get("test_unknown") is True for entry in chosen):
            for column in (test, f"{test}_std", f"{test}_sem"):
                table.frame.loc[index, column] = math.nan


def score_notes(table: Table) -> str:
    """The lines under a Score table about its rows' windows, unknown test Scores and uninformative Scores; ""
    when there is nothing to say."""
    notes = []
    if with_start := _rows_where(table, "with_start"):
        every = len(with_start) == (table.frame.status == "ok").sum()
        others = "" if every else "; from its first update on in the others"
        notes.append(f"Score over the last task's points from its step 0 (score.window={WITH_START}) in "
                     f"{', '.join(with_start)}{others}.")
    if unknown := _rows_where(table, "test_unknown"):
        notes.append(f"Test Score unknown in {', '.join(unknown)}: made before score.window existed, with the Score "
                     f"at the last task's step 0; over its training the Score is at another point, whose model was "
                     f"not kept (run again for a test Score).")
    if at_start := _rows_where(table, "at_start"):
        notes.append(f"Not informative: the Score is at the last task's step 0 (the model before any update on it, "
                     f"the same for every method) in {', '.join(at_start)}.")
    if at_chance_rows := _rows_where(table, "at_chance"):
        notes.append(f"Not informative: the last task's accuracy at the Score's point is at chance (within "
                     f"{CHANCE_STANDARD_ERRORS} standard errors of a uniform guess) in {', '.join(at_chance_rows)}.")
    return "".join(f"\n{note}\n" for note in notes)
