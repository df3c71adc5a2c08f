"""`cl-bench`: the Hydra application. Composes conf/, runs one experiment per job."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cl_bench.run import run_experiment


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
