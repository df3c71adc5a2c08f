"""The per-run metrics file: one JSON line per evaluation point, appended and flushed as it comes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends rows to `run_dir/metrics.jsonl` and keeps them in memory; forwards them to listeners."""

    def __init__(self, path: Path, listeners: list = ()):
        self.path = path
        self.rows: list[dict] = []
        self.listeners = list(listeners)
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        with self.path.open("a") as file:
            file.write(json.dumps(clean) + "\n")
        for listener in self.listeners:
            listener(row)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's metrics rows as a data frame (empty when the run logged nothing)."""
    path = run_dir / METRICS_FILE
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True)
