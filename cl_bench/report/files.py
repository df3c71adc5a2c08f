"""The report's files in its output folder (a sweep folder, or `cl-bench-report --out`): written only over
files the report itself wrote, each atomically. A file of the same name that is not a report's (its
first bytes tell) is never overwritten: the whole report is refused before any file is written."""

from __future__ import annotations

from pathlib import Path

from cl_bench.core.files import write_text
from cl_bench.core.layout import COMPARISON_FIGURE, JOBS_CSV, REPORT_CSV, REPORT_MARKDOWN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How each of the report's files begins, as the report writes it (the figure: a PNG whose metadata names
# Matplotlib, which drew it).
STARTS = {
    REPORT_MARKDOWN: (b"| Technique |", b"| Sequence |"),
    REPORT_CSV: (b"Technique,",),
    JOBS_CSV: (b"Technique,job,status,",),
}
HEAD_BYTES = 1024  # how much of a file is read to tell


class NotAReportFile(ValueError):
    """A file in the report's output folder, under a report file's name, that the report did not write."""


def is_report_file(path: Path) -> bool:
    """Whether `path` (a regular file) begins as the report's file of its name does."""
    if not path.is_file():
        return False
    with path.open("rb") as file:
        head = file.read(HEAD_BYTES)
    if path.name == COMPARISON_FIGURE:
        return head.startswith(PNG_SIGNATURE) and b"Matplotlib" in head
    return head.startswith(STARTS[path.name])


def check_report_folder(out_dir: Path) -> None:
    """NotAReportFile unless each report file in `out_dir` is absent or one the report wrote."""
    for name in (REPORT_MARKDOWN, REPORT_CSV, JOBS_CSV, COMPARISON_FIGURE):
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not is_report_file(path):
            raise NotAReportFile(
                f"{path} is not a file cl-bench-report wrote: nothing was written; give the report another "
                f"folder (--out DIR)"
            )


def write_report_files(out_dir: Path, markdown: str, table_csv: str, jobs_csv: str) -> None:
    """report.md, report.csv and jobs.csv, each atomically (check_report_folder first)."""
    for name, text in ((REPORT_MARKDOWN, markdown), (REPORT_CSV, table_csv), (JOBS_CSV, jobs_csv)):
        write_text(text, out_dir / name)
