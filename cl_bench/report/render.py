"""The report as text: the Markdown table (Technique | val metric | per task | test metric | extra columns | best
weights | n | cost, then what ± means), the list of every job counted (jobs.csv), and the jobs without a result
named under the table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from cl_bench.core.status import NOT_OK
from cl_bench.report.entries import FINAL_PREFIX
from cl_bench.report.settings import METRICS, SPREADS, Settings
from cl_bench.report.table import Table

LISTED = ("failed", "unreadable", "killed", "interrupted", "cancelled", "not_run")  # the jobs named under the table
JOB_COLUMNS = ["Technique", "job", "status", "seed", "overrides", "error"]


def _cell(row: pd.Series, column: str, spread: str) -> str:
    mean = row.get(column)
    if mean is None or pd.isna(mean):
        return ""
    spread_value = row.get(f"{column}_{spread}")
    return f"{100 * mean:.1f}%" + ("" if pd.isna(spread_value) else f" ± {100 * spread_value:.1f}")


def status_label(status: str) -> str:
    """A status as the table says it: "not run"."""
    return status.replace("_", " ")


def _n_text(row: pd.Series) -> str:
    """The chosen weights' ok seeds, then the row's jobs of every other status: "1 (1 failed, 2 not run)"."""
    extra = [f"{int(row[status])} {status_label(status)}" for status in NOT_OK if row[status]]
    return str(int(row.n)) + (f" ({', '.join(extra)})" if extra else "")


def _state_cell(status: str) -> str:
    """A row without an ok job: its state, in bold but while it is running."""
    return status_label(status) if status == "running" else f"**{status_label(status)}**"


def several_sequences(frame: pd.DataFrame) -> bool:
    """Whether the table's rows are of several task sequences (or scenarios): its rows then say which."""
    return frame[["sequence", "scenario"]].drop_duplicates().shape[0] > 1


def markdown_table(table: Table, settings: Settings) -> str:
    """Technique | val metric | per task | test metric | extra columns | best weights | n | cost, then what ±
    means."""
    metric = METRICS[settings.metric]
    values, extras = table.value_columns, table.extra_columns
    finals = [f"Final {c[len(FINAL_PREFIX) :]}" for c in extras]
    tasks = [c[len(metric.task) :] for c in values[1:-1]]
    sequences = several_sequences(table.frame)
    header = (["Sequence"] if sequences else []) + ["Technique", metric.val_header]
    header += [metric.task_header.format(k) for k in tasks] + [metric.test_header]
    header += [*finals, "Best hyper-parameters", "n", "Wall (s)", "Steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.frame.iterrows():
        cells = [f"{row.sequence} ({row.scenario}-IL)"] if sequences else []
        cells.append(row.Technique)
        if row.status != "ok":
            cells += [_state_cell(row.status), *[""] * (len(values) + len(extras)), _n_text(row), "", ""]
        else:
            cells += [_cell(row, column, settings.spread) for column in [*values, *extras]]
            cells += [row.shown_params, _n_text(row), f"{row.wall_time_s:.1f}"]
            cells.append(f"{row.steps_per_s:.0f}" if not pd.isna(row.steps_per_s) else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMean ± {SPREADS[settings.spread]} over the n seeds of each row's chosen hyper-parameters "
            f"(chosen by {metric.val_header}, reported on {metric.test_header}).\n")
    if finals:
        note += f"\n{', '.join(finals)}: each task's validation accuracy after the last task.\n"
    return "\n".join(lines) + "\n" + note


def _job_folder(run_dir: str, out_dir: Path) -> str:
    """A run folder relative to the report's folder when it is under it, else as found."""
    try:
        return str(Path(run_dir).resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return run_dir


def _natural(text: str) -> list:
    """A sort key putting job 2 before job 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def job_list(table: Table, out_dir: Path) -> pd.DataFrame:
    """Every job counted, by folder: its row's Technique, folder, status, seed, overrides, error."""
    jobs = [
        {"Technique": technique, "job": _job_folder(entry.folder, out_dir), "status": entry.status,
         "seed": entry.seed, "overrides": entry.overrides, "error": entry.error}
        for technique, runs in zip(table.frame.Technique, table.runs)
        for entry in runs
    ]
    return pd.DataFrame(sorted(jobs, key=lambda job: _natural(job["job"])), columns=JOB_COLUMNS)


def _md(value: Any) -> str:
    """A table cell: the first line of a text, "|" escaped."""
    return str(value).split("\n", 1)[0].replace("|", "\\|")


def jobs_markdown(jobs: pd.DataFrame) -> str:
    """The section under the table naming each failed, unreadable, interrupted or not-run job; "" if none."""
    listed = jobs[jobs.status.isin(LISTED)]
    if listed.empty:
        return ""
    lines = ["Jobs without a result (every job: jobs.csv):", "", "| Technique | Job | Status | Overrides | Error |",
             "|---|---|---|---|---|"]
    for job in listed.itertuples():
        overrides = "unknown" if pd.isna(job.overrides) else job.overrides or "none"
        error = "" if pd.isna(job.error) else job.error
        cells = [job.Technique, job.job, status_label(job.status), overrides, error]
        lines.append("| " + " | ".join(map(_md, cells)) + " |")
    return "\n" + "\n".join(lines) + "\n"
