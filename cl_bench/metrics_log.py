"""The per-run metrics file: one JSON line per evaluation point, appended and flushed as it comes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

METRICS_FILE = "metrics.jsonl"


def _json_row(row: dict) -> str:
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


class MetricsLog:
    """Appends rows to `path` and keeps them in memory; forwards them to listeners."""

    def __init__(self, path: Path, listeners: list = ()):
        self.path = path
        self.rows: list[dict] = []
        self.listeners = list(listeners)
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as file:
            file.write(_json_row(row) + "\n")
        for listener in self.listeners:
            listener(row)

    def resume(self, n_rows: int) -> None:
        """Keep the file's first `n_rows` rows (those a checkpoint accounts for), drop the rest."""
        lines = self.path.read_text().splitlines()[:n_rows] if self.path.exists() else []
        if len(lines) < n_rows:
            raise ValueError(f"{self.path} has {len(lines)} rows but the checkpoint accounts for {n_rows}")
        self.rows = [{k: (math.nan if v is None else v) for k, v in json.loads(line).items()} for line in lines]
        self.path.write_text("".join(line + "\n" for line in lines))


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's metrics rows as a data frame (empty when the run logged nothing)."""
    path = run_dir / METRICS_FILE
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True)
