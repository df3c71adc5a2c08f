"""Before a grid sweep starts in a folder that already exists (a sweep re-run into its own
`hydra.sweep.dir`): every job whose folder holds a run must be that run's config, and no job folder may
hold files no cl_bench run made, else the whole sweep is refused before any job starts. Jobs whose
folders match continue their runs."""

from __future__ import annotations

from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from cl_bench.cli.plugins import GRID_SWEEPER
from cl_bench.records.run_folder import ForeignFolder, check_folder_to_write, load_saved_config, mismatch, summarised


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The grid sweep's jobs in launch order, each as its list of overrides (as BasicSweeper makes them)."""
    loader = GlobalHydra.instance().config_loader()
    params = config.hydra.sweeper.get("params")
    arguments = [f"{key}={value}" for key, value in (params.items() if params else ())]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def job_config(config: DictConfig, overrides: list[str], num: int) -> tuple[DictConfig, str]:
    """A job's composed config (without `hydra`) and its subfolder name, as the launcher will make them."""
    composed = GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)
    with open_dict(composed):
        composed.hydra.job.id = num
        composed.hydra.job.num = num
    HydraConfig.instance().set_config(composed)
    try:
        subdir = str(composed.hydra.sweep.subdir)
    finally:
        HydraConfig.instance().set_config(config)
    with open_dict(composed):
        del composed["hydra"]
    return composed, subdir


def refused_jobs(config: DictConfig) -> list[str]:
    """One line per job of this grid sweep whose folder holds a run of another config, or files no cl_bench
    run made (none for other sweepers, whose jobs are checked one by one as they start, or for a new sweep
    folder)."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if config.hydra.sweeper.get("_target_") != GRID_SWEEPER or not sweep_dir.is_dir():
        return []
    refused = []
    for num, overrides in enumerate(job_overrides(config)):
        composed, subdir = job_config(config, overrides, num)
        job = f"job {num} ({' '.join(overrides)})"
        try:
            check_folder_to_write(sweep_dir / subdir)
        except ForeignFolder as error:
            refused.append(f"{job}: {error}")
            continue
        found = load_saved_config(sweep_dir / subdir)
        keys = mismatch(found.config, composed) if found is not None else []
        if keys:
            keys = sorted(summarised(keys))
            refused.append(f"{job}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
    return refused
