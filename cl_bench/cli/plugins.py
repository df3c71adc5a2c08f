"""The Hydra plug-ins and cl_bench classes the command line treats apart, by the `_target_` their configs name."""

from __future__ import annotations

GRID_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
WANDB_LOGGER = "cl_bench.loggers.wandb.WandbLogger"
