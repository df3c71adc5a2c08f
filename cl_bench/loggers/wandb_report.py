"""The multirun's Score table as a W&B Table, in a W&B run of its own (job_type report)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import wandb
from hydra.utils import instantiate
from omegaconf import DictConfig

from cl_bench.core.layout import COMPARISON_FIGURE
from cl_bench.loggers.wandb import WandbLogger, sweep_group

log = logging.getLogger(__name__)


def publish_report(config: DictConfig, sweep_dir: Path, table: pd.DataFrame) -> None:
    """When the sweep logs to W&B, log its report: `table` (as report.csv holds it) and the comparison figure.
    Never raises: the report's files are written already, W&B holds a copy; a failure is one warning."""
    try:
        logger = instantiate(config.logger)
        if not isinstance(logger, WandbLogger):
            return
        group = sweep_group(sweep_dir)
        run = logger.open_run(sweep_dir, "report", f"report {group}", group, {"sweep_dir": str(sweep_dir)})
        try:
            media = {"score_table": wandb.Table(dataframe=table.astype(object).where(table.notna(), None))}
            if (sweep_dir / COMPARISON_FIGURE).exists():
                media["comparison"] = wandb.Image(str(sweep_dir / COMPARISON_FIGURE))
            run.log(media)
        finally:
            run.finish()
    except Exception as error:  # noqa: BLE001
        log.warning("W&B report not logged: %s: %s", type(error).__name__, error)
