"""The report of a set of runs (the two-cities post's shape): read the run folders (report/read.py), see each run
as an entry (report/entries.py), make the table (report/table.py) and its text (report/render.py, and the
Score's notes: report/notes.py), and write report.md, report.csv, jobs.csv and comparison.png (only over the
report's own files: report/files.py). `cl-bench-report DIR...` (cli/report.py) and the end of a sweep
(cli/sweep_end.py) make the same report.

A job's status is ok, failed, interrupted, cancelled (its SLURM job was cancelled: scancel, or Ctrl-C on a SLURM
sweep), not_run (a sweep stopped before it), running (no summary yet, and a process holds its folder's lock),
killed (no summary, and no process holds the lock: it ended without writing one) or unreadable; each row counts
its jobs of every status (`n` is the chosen weights' ok seeds), and a row without an ok job shows its state.
report.md holds the table, then the jobs without a result; report.csv one line per experiment, a count column per
status; jobs.csv one line per job counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cl_bench.core.layout import COMPARISON_FIGURE
from cl_bench.records.figures import plot_comparison
from cl_bench.records.metrics_log import read_metrics
from cl_bench.report.entries import Entry, entries_of, once_per_seed
from cl_bench.report.files import check_report_folder, write_report_files
from cl_bench.report.notes import blank_unknown_tests, score_notes
from cl_bench.report.read import RUN_MARKERS, find_run_dirs, read_run
from cl_bench.report.render import job_list, jobs_markdown, markdown_table
from cl_bench.report.settings import METRICS, Settings, report_settings
from cl_bench.report.table import Table, score_table

HIDDEN = ["name", "shown_params"]  # the table's columns that report.csv leaves out (shown in the Technique)


@dataclass
class Report:
    """A report made: its Markdown text, the table and job list it shows, the runs it counted, how many jobs
    ended in each status (a run folder left out of the report, its config unreadable, as "unreadable"), and
    the settings it was made with."""

    text: str
    table: Table
    jobs: pd.DataFrame
    runs: list[Entry]
    statuses: Counter
    settings: Settings


def make_report(roots: list[Path], out_dir: Path, metric: str | None = None, spread: str | None = None,
                select: tuple[str, ...] = (), config_dirs: list[Path] | None = None,
                trusted: frozenset[tuple[str, str]] = frozenset(), columns: tuple[str, ...] = ()) -> Report:
    """Read the runs under `roots` and make their report (as `write_report`'s, without writing it)."""
    run_dirs = find_run_dirs(roots)
    where = ", ".join(map(str, roots))
    if not run_dirs:
        raise FileNotFoundError(f"no cl_bench runs under {where} (no folder there holds a "
                                f"{' or '.join(RUN_MARKERS)})")
    found = [run for run in (read_run(run_dir, config_dirs, trusted) for run_dir in run_dirs) if run is not None]
    settings = report_settings(found, metric, spread, select, columns)
    entries = entries_of(found, settings)
    if not entries:
        raise FileNotFoundError(f"no readable cl_bench runs under {where}: the {len(run_dirs)} run folder(s) "
                                f"there were left out (see the warnings)")
    runs = once_per_seed(entries)
    table = score_table(runs, settings)
    jobs = job_list(table, out_dir)
    notes = ""
    if settings.metric == "score":
        blank_unknown_tests(table, METRICS["score"].test)
        notes = score_notes(table)
    text = markdown_table(table, settings) + notes + jobs_markdown(jobs)
    statuses = Counter(entry.status for entry in runs)
    if len(run_dirs) > len(entries):
        statuses["unreadable"] += len(run_dirs) - len(entries)
    return Report(text, table, jobs, runs, statuses, settings)


def write_report(roots: list[Path], out_dir: Path, metric: str | None = None, spread: str | None = None,
                 select: tuple[str, ...] = (), config_dirs: list[Path] | None = None,
                 trusted: frozenset[tuple[str, str]] = frozenset(), columns: tuple[str, ...] = ()) -> str:
    """Read the runs under `roots`, write report.md, report.csv, jobs.csv and comparison.png to `out_dir`;
    the report's text. `metric`, `spread`, `select` and `columns` as `cl-bench-report`'s flags (None: the runs'
    `report:` config); `config_dirs`: config folders whose targets the runs' configs may name; `trusted`:
    more targets they may name (the sweep's own config's; both as records.saved_config.check_targets')."""
    return write(make_report(roots, out_dir, metric, spread, select, config_dirs, trusted, columns), out_dir).text


def csv_table(report: Report) -> pd.DataFrame:
    """The table as report.csv holds it: one line per row, its figures and counts."""
    return report.table.frame.drop(columns=HIDDEN, errors="ignore")


def read_report_csv(path: Path) -> pd.DataFrame:
    """A report.csv as written: only empty cells are missing (a technique labelled "None", as van de
    Ven & Tolias's lower bound, stays a label; pandas' default reads it as missing)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def write(report: Report, out_dir: Path) -> Report:
    """The report's files in `out_dir` (only over the report's own files: report/files.py)."""
    check_report_folder(out_dir)
    write_report_files(out_dir, report.text, csv_table(report).to_csv(index=False), report.jobs.to_csv(index=False))
    curves = {
        row.Technique: read_metrics(Path(row.best_run))
        for _, row in report.table.frame.iterrows()
        if row.status == "ok" and isinstance(row.get("best_run"), str)
    }
    curves = {label: frame for label, frame in curves.items() if not frame.empty}
    if curves:
        plot_comparison(curves, out_dir / COMPARISON_FIGURE)
    return report
