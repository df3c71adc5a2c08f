"""The per-run metrics file: one JSON line per evaluation point, appended and flushed as it comes."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cl_bench.core.files import read_data, write_text
from cl_bench.core.layout import METRICS_FILE

if TYPE_CHECKING:
    import pandas as pd

MAX_METRICS_BYTES = 2_000_000_000  # read back as data: a regular file of a size a run's rows can reach



def _json_row(row: dict) -> str:
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def _parsed_row(line: str) -> dict:
    """A row as `_json_row` wrote it, a missing value (null) back to NaN."""
    return {k: (math.nan if v is None else v) for k, v in json.loads(line).items()}


class MetricsLog:
    """Appends rows to `path` and keeps them in memory; forwards them to listeners."""

    def __init__(self, path: Path, listeners: list = ()):
        self.path = path
        self.rows: list[dict] = []
        self.listeners = list(listeners)
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        """Append `row` as one line; a write that fails (a full disk) leaves no part of it in the file."""
        line = memoryview((_json_row(row) + "\n").encode())
        with self.path.open("ab", buffering=0) as file:
            end = file.tell()
            try:
                while line:
                    line = line[file.write(line):]
            except OSError:
                file.truncate(end)
                raise
        self.rows.append(row)
        for listener in self.listeners:
            listener(row, len(self.rows) - 1)

    def resume(self, n_rows: int) -> None:
        """Keep the file's first `n_rows` rows (those a checkpoint accounts for), drop the rest; the file is
        rewritten atomically (a crash leaves the old one whole, for the next resume to count)."""
        lines = read_data(self.path).decode().splitlines()[:n_rows] if self.path.exists() else []
        if len(lines) < n_rows:
            raise ValueError(f"{self.path} has {len(lines)} rows but the checkpoint accounts for {n_rows}")
        self.rows = [_parsed_row(line) for line in lines]
        write_text("".join(line + "\n" for line in lines), self.path)


def write_metrics_csv(rows: list[dict], path: Path) -> None:
    """`rows` as CSV: a column per key in order of first appearance, a missing, None or NaN value
    empty, floats at full precision (the table pandas' read_json + to_csv made, without importing
    pandas in every run)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([cell(row.get(key)) for key in columns] for row in rows)
    write_text(text.getvalue(), path)


def read_rows(path: Path) -> list[dict]:
    """The rows of the metrics file `path`, as the run held them (a missing value as NaN)."""
    return [_parsed_row(line) for line in read_data(path, MAX_METRICS_BYTES).decode().splitlines() if line.strip()]


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's metrics rows as a data frame (empty when the run logged nothing), read as data (core.files)."""
    import pandas as pd

    path = run_dir / METRICS_FILE
    data = read_data(path, MAX_METRICS_BYTES) if path.exists() else b""
    return pd.read_json(io.BytesIO(data), lines=True) if data.strip() else pd.DataFrame()
