"""A job of a stopped sweep that never ran: its folder's summary says "not_run"."""

from __future__ import annotations

from pathlib import Path

from cl_bench.core.files import write_json
from cl_bench.core.layout import CONFIG_FILE, STATE_DIR, SUMMARY_FILE


def record_not_run(folder: Path, reason: str) -> bool:
    """Write the not-run summary in `folder`, unless it holds a run already (its saved config or a summary,
    e.g. a finished job of an earlier start of the same sweep, which keeps its own); whether it was written."""
    if (folder / STATE_DIR / CONFIG_FILE).exists() or (folder / SUMMARY_FILE).exists():
        return False
    write_json({"status": "not_run", "error": reason}, folder / SUMMARY_FILE)
    return True
