"""Hydra callbacks of `cl-bench`, kept free of heavy imports.

Hydra instantiates the callbacks of conf/config.yaml at the start of every run and multirun, so a
callback module that imported the report (pandas, matplotlib, torch) at the top would add about a
second to every single run. What a multirun needs is imported when it starts or ends.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def job_statuses(sweep_dir: Path) -> Counter:
    """How many of the sweep's jobs ended in each status ("no summary" for a job that wrote none)."""
    statuses: Counter = Counter()
    for job in (path.parent.parent for path in sweep_dir.glob("*/.hydra/config.yaml")):
        try:
            statuses[json.loads((job / "summary.json").read_text())["status"]] += 1
        except (OSError, ValueError, KeyError):
            statuses["no summary"] += 1
    return statuses


def exit_message(config: DictConfig, statuses: Counter) -> str | None:
    """Why the sweep exits non-zero, or None. A grid sweep fails when any job did not end ok; a search
    (Optuna) only when it was stopped, since failed trials are part of a search."""
    searched = config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER
    counted = ("interrupted", "cancelled", "not_run") if searched else tuple(s for s in statuses if s != "ok")
    bad = {status: statuses[status] for status in counted if statuses[status]}
    if not bad:
        return None
    listed = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in bad.items())
    return f"cl-bench: {sum(bad.values())} of {sum(statuses.values())} jobs did not end ok ({listed}); see the report"


class SweepCallback(Callback):
    """A multirun's start and end: a SLURM sweep gets the launcher that follows its jobs
    (cl_bench.cli.slurm_launcher, imported only then); a re-run into an existing sweep folder is checked
    before any job starts; at the end the Score table is written and printed (and logged to W&B with
    `logger=wandb`), then the command exits non-zero if the sweep did not complete."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.launcher._target_") == SLURM_LAUNCHER:
            from cl_bench.cli.slurm_launcher import use_for_slurm_multiruns  # submitit: only for SLURM sweeps

            use_for_slurm_multiruns()
        from cl_bench.cli.sweep_check import refused_jobs

        refused = refused_jobs(config)
        if refused:
            sys.exit(
                f"cl-bench: {config.hydra.sweep.dir} holds runs of other configs; no job was started:\n  "
                + "\n  ".join(refused)
                + "\nUse a new folder (hydra.sweep.dir=...), or the sweep's own command line to continue it."
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from cl_bench.results.report import write_sweep_report

        write_sweep_report(config)
        message = exit_message(config, job_statuses(Path(str(config.hydra.sweep.dir))))
        if message:
            sys.exit(message)
