"""Checks of a composed config before anything is built or trained: one clear message per bad key."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from cl_bench.data.sequences import ORDERS
from cl_bench.evaluation import ACCURACIES, TASK_AWARE
from cl_bench.optim import OPTIMIZER_STATES
from cl_bench.precision import PRECISIONS
from cl_bench.scenario import SCENARIOS


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


def _positive(cfg: DictConfig, key: str, kind: type = float) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r}: must be a positive {'integer' if kind is int else 'number'}")
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be > 0")


def _budget(cfg: DictConfig, prefix: str) -> None:
    steps, epochs = OmegaConf.select(cfg, f"{prefix}steps"), OmegaConf.select(cfg, f"{prefix}epochs")
    if (steps is None) == (epochs is None):
        raise ConfigError(
            f"{prefix}steps={steps}, {prefix}epochs={epochs}: set exactly one of them (the other to null)"
        )
    if prefix == "first_task." and steps == 0:
        return  # a first task taken as trained (init_from)
    _positive(cfg, f"{prefix}steps" if steps is not None else f"{prefix}epochs", int if steps is not None else float)


def _orders(cfg: DictConfig) -> None:
    """`task_order` and every split dataset's `class_order` are fixed or random."""
    splits = [name for name, node in cfg.dataset.items() if "class_order" in node]
    keys = ["task_order"] + [f"dataset.{name}.class_order" for name in splits]
    for key in keys:
        value = OmegaConf.select(cfg, key, default="fixed")
        if value not in ORDERS:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(ORDERS)}")


def _missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Keys left at `???`, found without resolving interpolations (OmegaConf.missing_keys resolves
    them, and raises on one that points at a `???`: the key it points at is reported instead)."""
    found = []
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], (DictConfig, ListConfig)):
            found += _missing_keys(node[key], f"{prefix}{key}.")
    return found


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that cannot work."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(f"mandatory value(s) not set: {', '.join(missing)} (give them on the command line, key=value)")
    for key in ("lr", "first_task.lr"):
        _positive(cfg, key)
    for key in ("batch_size", "eval_batch_size", "eval_every", "checkpoint.keep"):
        _positive(cfg, key, int)
    if cfg.checkpoint.every is not None:
        _positive(cfg, "checkpoint.every", int)
    _budget(cfg, "first_task.")
    _budget(cfg, "")
    if cfg.scenario not in SCENARIOS:
        raise ConfigError(f"scenario={cfg.scenario!r}: choose one of {', '.join(SCENARIOS)}")
    if not cfg.dataset:
        raise ConfigError("dataset=[]: select at least one dataset, e.g. dataset=[split_sklearn_digits]")
    _orders(cfg)
    if cfg.optimizer_state not in OPTIMIZER_STATES:
        raise ConfigError(f"optimizer_state={cfg.optimizer_state!r}: choose one of {', '.join(OPTIMIZER_STATES)}")
    if cfg.accuracy not in ACCURACIES:
        raise ConfigError(f"accuracy={cfg.accuracy!r}: choose one of {', '.join(ACCURACIES)}")
    if cfg.accuracy == TASK_AWARE and cfg.scenario == "domain":
        raise ConfigError("accuracy=task_aware: domain-IL has one shared label space; use accuracy=scenario")
    if cfg.threads is not None:
        _positive(cfg, "threads", int)
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.model.get("channels_last", False) not in (True, False, "auto"):
        raise ConfigError(f"model.channels_last={cfg.model.channels_last!r}: choose true, false or auto")
