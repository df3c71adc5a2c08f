"""A saved config is data, not code. A run folder's config may have been shared, downloaded or edited, and
reading it must not read the reader's environment, call a function, or cost more than a config costs. Every
reader of a run folder's config (`resume=`, the folder checks, `cl-bench-report`) goes through
`read_saved_config`:

- **The file**: a regular file (not a FIFO or a device) of at most MAX_CONFIG_BYTES, UTF-8 YAML without
  aliases (`*name`: cl_bench never writes one, and an alias bomb of five lines costs gigabytes).
- **Interpolations** may read the config itself (`${seed}`, `${oc.select:method.lr,0.001}`) and nothing
  else: a value that calls another resolver (`oc.env`, `now`, `oc.decode`, one of the reader's own) is
  kept as its literal text where it is only a label (`method.label`) or says where or how the run is done
  (`logger.mode`, `data_dir`: results.experiment_keys.NON_EXPERIMENT_KEYS; the report never shows those),
  and refused, naming the key, anywhere else.
- **Targets**: `hydra.utils.instantiate` calls whatever a `_target_` names (`builtins.open` would truncate a
  file). A `_target_` is accepted only at a place where the config folders put one (the project's `conf/`, and
  the invocation's own: `--config-dir`, `hydra.searchpath`), and only if it is a target those folders put at
  that place, a target of the invocation's own composed config (`trusted`: what the user's command line
  names there), or a class of cl_bench or torch of the kind that place takes (SLOT_KINDS: a method's place takes a
  Method, the optimiser's an Optimizer; e.g. `optimizer._target_=torch.optim.RMSprop` given on a command line).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, grammar_parser
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

from cl_bench.core.experiment import changes_experiment, matches
from cl_bench.core.files import read_data
from cl_bench.core.layout import CONFIG_DIR

TARGET_KEY = "_target_"
MAX_CONFIG_BYTES = 1_000_000  # a run's config is a few kilobytes
SAFE_RESOLVERS = frozenset({"oc.select"})  # reads a key of the same config
LABEL_KEYS = ("method.label", "plus.*.label")  # a row's name: kept as written
# Config groups selected several at a time: their options' names are keys (`dataset.vmmr`, `plus.replay`), and
# every option's place is one place (`dataset.*`). A part of a combination (`plus.*`) is a method.
MULTI_SELECT = ("dataset", "plus")
SAME_PLACE = {"plus.*": "method"}
# The kind of class a place takes, for a cl_bench or torch class that no config folder names there.
SLOT_KINDS = {
    "method": "cl_bench.methods.base.Method",
    "model": "torch.nn.Module",
    "optimizer": "torch.optim.Optimizer",
    "logger": "cl_bench.loggers.base.RunLogger",
}
CLASS_MODULES = ("cl_bench", "torch.optim", "torch.nn")


class UnsafeConfig(ValueError):
    """A saved config that is not read: the message names the file, the key and why."""


@dataclass
class SavedConfig:
    """A saved config read as data, and the keys whose values were kept as literal text (an interpolation
    of a resolver that reads outside the file, at a label or a key that does not change the experiment)."""

    config: DictConfig
    literal: dict[str, str]


def load_yaml_data(path: Path, limit: int = MAX_CONFIG_BYTES) -> Any:
    """The YAML file `path` read back from a run folder as data (core.files.read_data's limits), without
    resolving anything; UnsafeConfig for YAML aliases."""
    text = read_data(path, limit).decode("utf-8")
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
        raise UnsafeConfig(f"{path}: uses YAML aliases (*name), which cl_bench never writes; not read")
    return OmegaConf.create(text) if text.strip() else OmegaConf.create({})


def resolvers_called(text: str) -> set[str]:
    """The names of the resolvers an interpolation in `text` calls, nested ones included (`${a:${b:x}}`);
    a text OmegaConf cannot parse calls the unknown resolver "?"."""
    try:
        tree = grammar_parser.parse(text, parser_rule="configValue")
    except GrammarParseError:
        return {"?"}
    found: set[str] = set()
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            found.add(node.resolverName().getText())
        nodes.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return found


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested dicts and lists."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        yield prefix.rstrip("."), tree
        return
    for key, value in items:
        yield from _leaves(value, f"{prefix}{key}.")


def outside_reads(tree: dict) -> Iterator[tuple[str, str, set[str]]]:
    """(dotted key, text, resolvers) of every value that calls a resolver reading outside the config."""
    for key, value in _leaves(tree):
        if isinstance(value, str) and "${" in value:
            unsafe = resolvers_called(value) - SAFE_RESOLVERS
            if unsafe:
                yield key, value, unsafe


def is_literal_key(key: str) -> bool:
    """Whether a value at `key` may be kept as its literal text: a label, or a key that does not change the
    experiment."""
    return matches(key, LABEL_KEYS) or not changes_experiment(key)


def read_saved_config(path: Path, config_dirs: Iterable[Path] | None = None,
                      trusted: Iterable[tuple[str, str]] | None = ()) -> SavedConfig:
    """The run config at `path`, read as data (the module's rules); UnsafeConfig when it breaks one, OSError
    or ValueError when it cannot be read. `config_dirs`: the invocation's own config folders (default: those
    of the running Hydra app); `trusted`: the places and targets of the invocation's own config (targets_of),
    None for a reader that only compares the config with another and never instantiates or imports what it
    names (its targets are then not checked)."""
    config = load_yaml_data(path)
    if not isinstance(config, DictConfig):
        raise ValueError(f"{path}: not a mapping of config keys")
    tree = OmegaConf.to_container(config, resolve=False)
    literal = {}
    for key, text, unsafe in outside_reads(tree):
        if not is_literal_key(key):
            raise UnsafeConfig(
                f"{path}: {key}={text} calls {', '.join(sorted(unsafe))}, which reads outside the file; a saved "
                f"config is read as data: not read"
            )
        OmegaConf.update(config, key, text.replace("${", "\\${"), merge=False)
        literal[key] = text
    if trusted is not None:
        check_targets(tree, str(path), config_dirs, trusted)
    return SavedConfig(config, literal)


def _targets_in(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key of the node, target) of every `_target_` in nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == TARGET_KEY:
                yield prefix.rstrip("."), value
            else:
                yield from _targets_in(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _targets_in(value, f"{prefix}{index}.")


def place_of(key: str) -> str:
    """The place a node at dotted `key` is in: a multi-select group's option name as `*`, a part of a
    combination as a method (`plus.replay.x` → `method.x`)."""
    parts = key.split(".") if key else []
    if len(parts) > 1 and parts[0] in MULTI_SELECT:
        parts[1] = "*"
    place = ".".join(parts)
    for pattern, same in SAME_PLACE.items():
        if place == pattern or place.startswith(f"{pattern}."):
            return same + place[len(pattern):]
    return place


def _package(path: Path, folder: Path, text: str) -> str:
    """A config file's package: its `# @package` header, else its group (the folder path, dotted)."""
    group = ".".join(path.relative_to(folder).parent.parts)
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# @package"):
            package = line.removeprefix("# @package").strip()
            for token, value in (("_global_", ""), ("_group_", group)):
                if package == token or package.startswith(f"{token}."):
                    package = value + package[len(token):]
            return package.strip(".")
    return group


@lru_cache(maxsize=None)
def folder_places(folder: Path) -> dict[str, frozenset[str]]:
    """{place: the targets the YAML files under `folder` put there} (unreadable files add none)."""
    places: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.yaml")):
        try:
            text = path.read_text()
            tree = yaml.safe_load(text)
        except (OSError, yaml.YAMLError):
            continue
        package = _package(path, folder, text)
        for key, target in _targets_in(tree):
            if isinstance(target, str):
                places.setdefault(place_of(".".join(p for p in (package, key) if p)), set()).add(target)
    return {place: frozenset(targets) for place, targets in places.items()}


def invocation_config_dirs() -> list[Path]:
    """The file config folders of this Hydra invocation (`--config-dir`, search path); none outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    return [Path(source.path) for source in sources if source.schema == "file" and source.path]


def _is_class_of_kind(target: str, place: str) -> bool:
    """Whether `target` is a class of cl_bench or torch of the kind `place` takes (SLOT_KINDS)."""
    kind = SLOT_KINDS.get(place)
    module_name, _, name = target.rpartition(".")
    if kind is None or not any(module_name == root or module_name.startswith(f"{root}.") for root in CLASS_MODULES):
        return False
    kind_module, _, kind_name = kind.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name, None)
        base = getattr(importlib.import_module(kind_module), kind_name)
    except ImportError:
        return False
    return inspect.isclass(found) and issubclass(found, base)


def targets_of(config: DictConfig | dict) -> frozenset[tuple[str, str]]:
    """The (place, target) of every `_target_` of a config of this invocation's own (they are trusted there)."""
    tree = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config
    return frozenset((place_of(key), value) for key, value in _targets_in(tree) if isinstance(value, str))


def check_targets(tree: dict, source: str, config_dirs: Iterable[Path] | None = None,
                  trusted: Iterable[tuple[str, str]] = ()) -> None:
    """UnsafeConfig if the config `tree` (read from `source`) has a `_target_` that is not allowed (the module's
    rules). `config_dirs`: the invocation's own config folders (default: those of the running Hydra app);
    `trusted`: the places and targets of the invocation's own config (targets_of)."""
    folders = [CONFIG_DIR, *(invocation_config_dirs() if config_dirs is None else config_dirs)]
    places: dict[str, set[str]] = {}
    for folder in folders:
        for place, targets in folder_places(Path(folder).resolve()).items():
            places.setdefault(place, set()).update(targets)
    trusted = frozenset(trusted)
    for key, target in _targets_in(tree):
        shown = f"{key}.{TARGET_KEY}" if key else TARGET_KEY
        if not isinstance(target, str) or "${" in target:
            raise UnsafeConfig(f"{source}: {shown}={target!r} is not a plain target name; not read")
        place = place_of(key)
        if place not in places:
            raise UnsafeConfig(f"{source}: {shown}={target}: no config folder puts a target there; not read")
        if target not in places[place] and (place, target) not in trusted and not _is_class_of_kind(target, place):
            raise UnsafeConfig(
                f"{source}: {shown}={target} is not an allowed target there (one the config folders put at "
                f"{place}, or a cl_bench or torch class of its kind); not read (if it is yours, add its config "
                f"folder with --config-dir)"
            )
