"""The logger interface the run calls; the default logs nothing beyond the run folder."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class RunLogger:
    """Receives the resolved config at start, every metrics row, and the summary at the end."""

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """Called at every start of the run in `run_dir` (a resumed run's too), with its resolved config,
        before any training: metrics.jsonl still holds every row earlier starts wrote."""

    def log_row(self, row: dict, index: int) -> None:
        """One evaluation point (the same row the metrics file gets) and its index in that file. A resumed
        run computes the rows after its checkpoint again, with the same indices."""

    def finish(self, summary: dict, run_dir: Path) -> None:
        """Called once, success or failure, after the curve figure is drawn."""
