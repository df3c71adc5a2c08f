"""What a run's summary says the run is: the keys a report groups and labels runs by, read from its config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cl_bench.core.experiment import RUN_KEYS, method_label


def describe(cfg: DictConfig) -> dict:
    """The keys a report groups and labels runs by; as many as can be read (a config that does not
    resolve fails validation, and its summary still names what it can)."""
    try:
        return _description(cfg)
    except Exception:  # noqa: BLE001
        keys = ("lr", "seed", "scenario")
        found = {key: OmegaConf.select(cfg, key, throw_on_resolution_failure=False) for key in keys}
        return {key: value for key, value in found.items() if isinstance(value, (int, float, str))}


def _description(cfg: DictConfig) -> dict:
    nodes = {"method": cfg.method, **{f"plus.{name}": node for name, node in (cfg.get("plus") or {}).items()}}
    params = {
        name: {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("_target_", *RUN_KEYS)}
        for name, node in nodes.items()
    }
    return {
        "method": method_label(cfg),
        "method_params": params,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "scenario": cfg.scenario,
        "datasets": list(cfg.dataset.keys()),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
    }
