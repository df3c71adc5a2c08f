"""`cl-bench`: the Hydra application. Composes the repository's conf/ (hence the editable install),
runs one experiment per job."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cl_bench import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    from cl_bench.run import objective, run_experiment  # torch and the rest only when a job runs (not for --help)

    hydra_cfg = HydraConfig.get()
    summary = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir))
    if summary["status"] != "ok" and hydra_cfg.mode == RunMode.RUN:
        sys.exit(f"cl-bench: run failed: {summary.get('error')} (see {hydra_cfg.runtime.output_dir})")
    return objective(summary)


if __name__ == "__main__":
    main()
