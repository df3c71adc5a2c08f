"""`cl-bench`: the Hydra application. Composes the repository's conf/ (hence the editable install),
runs one experiment per job."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cl_bench import CONFIG_DIR


_frozen = False


def freeze_startup_objects() -> None:
    """Once per process, exempt the objects alive now (Hydra's and the config's, ~200k) from the cyclic
    garbage collector: they live as long as the process, and every full collection during the run
    (the imports of torch and torch._dynamo trigger several) would scan them again (~0.25 s in all).
    Only once: freezing again in a later job of a multirun could keep an earlier job's garbage."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    freeze_startup_objects()
    from cl_bench.figure_worker import CurveFigure

    figure = CurveFigure()  # its helper process imports matplotlib while this one imports torch
    from cl_bench.run import objective, run_experiment  # torch and the rest only when a job runs (not for --help)

    hydra_cfg = HydraConfig.get()
    summary = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir), figure)
    if hydra_cfg.mode == RunMode.RUN:
        # The process ends after this single job, its files written and closed: spare it the
        # interpreter's final collections over everything torch and the run left (~0.6 s).
        gc.freeze()
    if summary["status"] != "ok" and hydra_cfg.mode == RunMode.RUN:
        sys.exit(f"cl-bench: run failed: {summary.get('error')} (see {hydra_cfg.runtime.output_dir})")
    return objective(summary)


if __name__ == "__main__":
    main()
