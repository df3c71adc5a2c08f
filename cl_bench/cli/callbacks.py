"""Hydra callbacks of `cl-bench`, kept free of heavy imports.

Hydra instantiates the callbacks of conf/config.yaml at the start of every run and multirun, so a
callback module that imported the report (pandas, matplotlib, torch) at the top would add about a
second to every single run. What a multirun needs is imported when it starts or ends.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cl_bench.cli.plugins import GRID_SWEEPER, OPTUNA_SWEEPER, SLURM_LAUNCHER
from cl_bench.core.errors import one_line


def ends_in_one_line(hook: Callable[..., None]) -> Callable[..., None]:
    """A callback hook whose refusals and failures end the command in one line: Hydra turns an exception a
    callback raises into a warning and carries on, which would start a job in a refused folder, or exit 0
    after a sweep whose report failed."""

    @functools.wraps(hook)
    def guarded(self: Callback, config: DictConfig, **kwargs: Any) -> None:
        from cl_bench.cli.folders import Refused
        from cl_bench.cli.optuna_study import OtherExperiment
        from cl_bench.records.run_folder import ForeignFolder, NotResumable

        try:
            hook(self, config, **kwargs)
        except (ForeignFolder, NotResumable, OtherExperiment, Refused) as refusal:
            sys.exit(f"cl-bench: {refusal}")
        except Exception as error:  # noqa: BLE001
            sys.exit(f"cl-bench: {hook.__name__} failed: {type(error).__name__}: {one_line(error)}")

    return guarded


class SweepCallback(Callback):
    """A run's start: its folder is checked before Hydra makes it (cl_bench.cli.folders). A multirun's
    start and end: the sweep folder is checked the same way; a SLURM sweep gets the launcher that follows
    its jobs (cl_bench.cli.slurm_launcher, imported only then); a re-run into an existing sweep folder is
    checked before any job starts; at the end the Score table is written and printed (and logged to W&B
    with `logger=wandb`), then the command exits non-zero if the sweep did not complete."""

    @ends_in_one_line
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cl_bench.cli.folders import prepare_run

        prepare_run(config)

    @ends_in_one_line
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cl_bench.cli.folders import prepare_sweep

        prepare_sweep(config)
        if config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
            from cl_bench.cli.optuna_study import claim_study  # optuna: only for searches

            claim_study(config)
        if OmegaConf.select(config, "hydra.launcher._target_") == SLURM_LAUNCHER:
            from cl_bench.cli.slurm_launcher import use_for_slurm_multiruns  # submitit: only for SLURM sweeps

            use_for_slurm_multiruns()
        from cl_bench.cli.sweep_check import job_overrides, refused_jobs

        if config.hydra.sweeper.get("_target_") == GRID_SWEEPER and not job_overrides(config):
            sys.exit("cl-bench: the sweep has no job (its values make no combination, e.g. seed='range(0,0)'); "
                     "nothing was run")
        refused = refused_jobs(config)
        if refused:
            sys.exit(
                f"cl-bench: {config.hydra.sweep.dir} holds runs of other configs; no job was started:\n  "
                + "\n  ".join(refused)
                + "\nUse a new folder (hydra.sweep.dir=...), or the sweep's own command line to continue it."
            )

    @ends_in_one_line
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from cl_bench.cli.sweep_end import finish_sweep

        message = finish_sweep(config)
        if message:
            sys.exit(message)
