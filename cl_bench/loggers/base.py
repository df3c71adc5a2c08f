"""The logger interface the run calls; the default logs nothing beyond the run folder."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class RunLogger:
    """Receives the resolved config at start, every metrics row, and the summary at the end."""

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """Called before any training, with the run's resolved config."""

    def log_row(self, row: dict) -> None:
        """One evaluation point (the same row the metrics file gets)."""

    def finish(self, summary: dict, run_dir: Path) -> None:
        """Called once, success or failure, after summary.json and the figure are written."""
