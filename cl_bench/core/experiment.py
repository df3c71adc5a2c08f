"""Which config keys make the experiment: two runs are the same experiment (seeds of it) when their
configs agree on every key but those listed here, which say where and how a run is done, not what it
computes. The report groups runs by this identity; resuming checks it.

Keys are dotted paths; `*` stands for any one key (every `dataset.<name>` node).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

# The keys of a method node that are not the method's constructor arguments, and not part of what a run
# computes: `label` is the row's name (`method=lowlr` and `method=baseline lr=1e-4` are one experiment), `lr` a
# preset's learning rate (the top-level `lr` is the effective one).
RUN_KEYS = ("label", "lr")

NON_EXPERIMENT_KEYS: frozenset[str] = frozenset(
    {
        "data_dir",
        "output_root",
        "cache_dir",
        "threads",
        "device",
        "logger",
        "checkpoint",
        "hydra",
        "resume",
        "report",
        "eval_batch_size",
        "first_task.cache",
        *(f"method.{key}" for key in RUN_KEYS),
        *(f"plus.*.{key}" for key in RUN_KEYS),
        "dataset.*.root",
        "dataset.*.cache_dir",
        "dataset.*.workers",
        "dataset.*.decoded_cache",
        "dataset.*.source.root",
        "dataset.*.source.download",
    }
)
# Every run's identity is resolved with this seed (so `order_seed: ${seed}` follows it); then `seed` goes.
IDENTITY_SEED = 0


def experiment_identity(config: DictConfig | dict, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved config without NON_EXPERIMENT_KEYS, `ignore` (more dotted keys, e.g. the
    hyper-parameters a report selects over) and the seed; whole floats as ints (`dropout=0` is 0.0).
    Needs no Hydra runtime: an interpolation that cannot be resolved (`${hydra:...}`) is kept as written."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=False)
    config = OmegaConf.create(config)
    config.pop("hydra", None)
    config.seed = IDENTITY_SEED
    identity = _resolved(config)
    for key in {*NON_EXPERIMENT_KEYS, *ignore, "seed"}:
        drop_key(identity, key)
    return identity


def _resolved(node: DictConfig | ListConfig) -> Any:
    """`node` as plain containers, each value resolved where it can be, else kept raw."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    plain = {key: _resolved_value(node, key) for key in keys}
    return plain if isinstance(node, DictConfig) else list(plain.values())


def _resolved_value(node: DictConfig | ListConfig, key: Any) -> Any:
    try:
        value = node[key]
    except Exception:  # noqa: BLE001 (e.g. a resolver of Hydra's runtime): the raw text
        return node._get_node(key)._value()
    if isinstance(value, (DictConfig, ListConfig)):
        return _resolved(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def at(tree: Any, key: str, default: Any = None) -> Any:
    """The value at dotted `key` of nested dicts, or `default` where there is none (the one dotted-key getter of
    plain config trees)."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def drop_key(tree: dict, key: str) -> None:
    """Remove dotted `key` (`*` for any one key) from nested dicts, if there."""
    head, _, rest = key.partition(".")
    heads = list(tree) if head == "*" else [head]
    for name in heads:
        if not rest:
            tree.pop(name, None)
        elif isinstance(tree.get(name), dict):
            drop_key(tree[name], rest)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Leaves of nested dicts by dotted key, each value as compact JSON (lists are leaves)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value, sort_keys=True, default=str)
    return flat



def matches(key: str, patterns: Iterable[str]) -> bool:
    """Whether dotted `key` is one of `patterns` or under one (`*` stands for any one key)."""
    parts = key.split(".")
    for listed in patterns:
        pattern = listed.split(".")
        if len(pattern) <= len(parts) and all(p in ("*", k) for p, k in zip(pattern, parts)):
            return True
    return False


def changes_experiment(key: str) -> bool:
    """Whether dotted `key` (a command-line override's key) can change what a run computes: False for
    a key in NON_EXPERIMENT_KEYS or under one (`logger.mode`, `dataset.split_mnist.root`)."""
    return not matches(key, NON_EXPERIMENT_KEYS)


def differing_keys(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two nested dicts (a key missing on one side differs)."""
    flat_a, flat_b = flatten(a), flatten(b)
    return sorted(key for key in {*flat_a, *flat_b} if flat_a.get(key) != flat_b.get(key))


def method_label(cfg: DictConfig) -> str:
    """The run's method as tables name it: each part's `label` (else its class name), joined by " + "."""
    nodes = [cfg.method, *(cfg.get("plus") or {}).values()]
    return " + ".join(node.get("label") or node._target_.rsplit(".", 1)[-1] for node in nodes)
