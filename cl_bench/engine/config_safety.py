"""Saved configs are data, not code. A run folder's config may have been shared, downloaded or edited,
and `hydra.utils.instantiate` calls whatever `_target_` names (`builtins.open` would truncate a file).
Before a saved config is used (`resume=`, `cl-bench-report`), every `_target_` in it must be one of:
- a target named in a config file of the project's own `conf/` or of a config folder this invocation
  itself adds (`--config-dir`, `hydra.searchpath`): the user's own data sets, models and methods;
- a class of cl_bench or of `torch.optim` / `torch.nn` (e.g. `optimizer._target_=torch.optim.RMSprop`
  given on the command line). Functions are not enough: `torch.save` would write any file;
- a target of the invocation's own composed config (`trusted`): what the user's command line names,
  e.g. the sweep whose jobs the end-of-sweep report reads.
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf

from cl_bench import CONFIG_DIR

TARGET_KEY = "_target_"
CLASS_MODULES = ("cl_bench", "torch.optim", "torch.nn")


class UnsafeTarget(ValueError):
    """A saved config names a `_target_` that is not allowed; the message names the key and the target."""


def _targets_in(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every `_target_` in nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if key == TARGET_KEY:
                yield path, value
            else:
                yield from _targets_in(value, f"{path}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _targets_in(value, f"{prefix}{index}.")


@lru_cache(maxsize=None)
def _folder_targets(folder: Path) -> frozenset[str]:
    """The `_target_` strings of every YAML file under `folder` (unreadable files add none)."""
    found: set[str] = set()
    for path in folder.rglob("*.yaml"):
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        found.update(value for _, value in _targets_in(tree) if isinstance(value, str))
    return frozenset(found)


def invocation_config_dirs() -> list[Path]:
    """The file config folders of this Hydra invocation (`--config-dir`, search path); none outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    return [Path(source.path) for source in sources if source.schema == "file" and source.path]


def _is_allowed_class(target: str) -> bool:
    module_name, _, name = target.rpartition(".")
    if not any(module_name == root or module_name.startswith(f"{root}.") for root in CLASS_MODULES):
        return False
    try:
        return inspect.isclass(getattr(importlib.import_module(module_name), name, None))
    except ImportError:
        return False


def targets_of(config: DictConfig | dict) -> frozenset[str]:
    """The `_target_` strings of a config (of this invocation: they are trusted)."""
    tree = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config
    return frozenset(value for _, value in _targets_in(tree) if isinstance(value, str))


def check_targets(config: DictConfig | dict, source: str, config_dirs: Iterable[Path] | None = None,
                  trusted: Iterable[str] = ()) -> None:
    """Raise UnsafeTarget if `config` (read from `source`) names a target that is not allowed.
    `config_dirs`: the invocation's own config folders (default: those of the running Hydra app);
    `trusted`: targets of the invocation's own config (targets_of)."""
    tree = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config
    folders = [CONFIG_DIR, *(invocation_config_dirs() if config_dirs is None else config_dirs)]
    known = frozenset(trusted).union(*(_folder_targets(Path(folder).resolve()) for folder in folders))
    for key, target in _targets_in(tree):
        if not isinstance(target, str) or "${" in target:
            raise UnsafeTarget(f"{source}: {key}={target!r} is not a plain target name; refusing to use this config")
        if target not in known and not _is_allowed_class(target):
            raise UnsafeTarget(
                f"{source}: {key}={target} is not an allowed target (a class of cl_bench or torch, or one named in this "
                f"invocation's config folders); refusing it (if it is yours, add its config folder with --config-dir)"
            )
