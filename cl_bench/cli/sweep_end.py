"""The end of a sweep: its report written and printed (and logged to W&B with `logger=wandb`), and why the
command exits non-zero, from the job statuses the report itself read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cl_bench.cli.plugins import OPTUNA_SWEEPER, WANDB_LOGGER
from cl_bench.core.errors import one_line
from cl_bench.core.layout import HYDRA_RECORD, REPORT_MARKDOWN
from cl_bench.core.status import NOT_OK


def exit_message(config: DictConfig, statuses: Counter) -> str | None:
    """Why the sweep exits non-zero, or None. A grid sweep fails when any job did not end ok; a search
    (Optuna) only when it was stopped, since failed trials are part of a search."""
    searched = config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER
    counted = ("interrupted", "cancelled", "not_run") if searched else NOT_OK
    bad = {status: statuses[status] for status in counted if statuses[status]}
    if not bad:
        return None
    listed = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in bad.items())
    return f"cl-bench: {sum(bad.values())} of {sum(statuses.values())} jobs did not end ok ({listed}); see the report"


def finish_sweep(config: DictConfig) -> str | None:
    """Write and print the sweep's report (with the sweep config's `report:` settings), log it to W&B with
    `logger=wandb`; why the command exits non-zero, or None."""
    from cl_bench.records.saved_config import targets_of
    from cl_bench.report.make import csv_table, make_report, write

    sweep_dir = Path(str(config.hydra.sweep.dir))
    if next(sweep_dir.rglob(HYDRA_RECORD), None) is None:
        return f"cl-bench: the sweep ran no job (its values make no combination); nothing in {sweep_dir}"
    try:
        report = write(make_report(
            [sweep_dir], sweep_dir,
            metric=OmegaConf.select(config, "report.metric", default=None),
            spread=OmegaConf.select(config, "report.spread", default=None),
            select=tuple(OmegaConf.select(config, "report.select", default=None) or ()),
            trusted=targets_of({**OmegaConf.to_container(config, resolve=False), "hydra": None}),
            columns=tuple(OmegaConf.select(config, "report.columns", default=None) or ()),
        ), sweep_dir)
    except (FileNotFoundError, ValueError) as error:
        return f"cl-bench: the sweep's jobs ended without a report: {one_line(error)}"
    print(f"\nResults table ({sweep_dir / REPORT_MARKDOWN}):\n\n{report.text}")
    if OmegaConf.select(config, "logger._target_") == WANDB_LOGGER:
        from cl_bench.loggers.wandb_report import publish_report  # wandb: only for a sweep that logs to it

        publish_report(config, sweep_dir, csv_table(report))
    return exit_message(config, report.statuses)
