"""The one way the tests compose conf/config.yaml, and the tiny debug preset (conf/debug/tiny.yaml)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cl_bench.core.layout import CONFIG_DIR

# Two 30-step tasks on the embedded digits, evaluated every 10 steps, one thread: the size of a test's run.
TINY = "+debug=tiny"


def compose_config(
    *overrides: str, output_root: Path | None = None, data_dir: Path | None = None, hydra: bool = False
) -> DictConfig:
    """conf/config.yaml with `overrides`, as `cl-bench` composes it; `hydra`: with Hydra's own node
    (hydra.runtime.choices, hydra.sweeper.params, ...)."""
    where = [f"{key}={value}" for key, value in (("output_root", output_root), ("data_dir", data_dir)) if value]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", [*where, *overrides], return_hydra_config=hydra)
