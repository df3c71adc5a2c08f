"""Telling apart rows that would share a name ("Baseline" twice): by the fewest config differences that do it,
config groups first (`model=mlp400`), then config leaves under their shortest unambiguous name."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from typing import Any

from cl_bench.core.experiment import flatten


def short(value: Any) -> str:
    """A config value as few characters as say it: 1e-4 as 0.0001, lists without spaces."""
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _short_key(key: str, every_key: set[str]) -> str:
    """The shortest dotted suffix of `key` that no other key ends with."""
    parts = key.split(".")
    for start in range(len(parts) - 1, -1, -1):
        suffix = ".".join(parts[start:])
        if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in every_key):
            return suffix
    return key


def _features(identities: list[dict], choices: list[dict]) -> list[tuple[str, list[str]]]:
    """Ways to tell rows apart, as (name, each row's value): config groups whose choice differs first
    (`model=mlp400`), then every differing config leaf under its shortest unambiguous name."""
    flats = [flatten(identity) for identity in identities]
    leaves = sorted({key for flat in flats for key in flat if len({flat.get(key) for flat in flats}) > 1})
    groups = sorted({key.split(".")[0] for key in leaves})
    features = [
        (group, [str(c.get(group)) for c in choices])
        for group in groups
        if all(isinstance(c.get(group), str) for c in choices) and len({c[group] for c in choices}) > 1
    ]
    every_key = {key for flat in flats for key in flat}
    for key in leaves:
        shown = [short(json.loads(flat[key])) if key in flat else "—" for flat in flats]
        features.append((_short_key(key, every_key), shown))
    return features


def _common_value(values: list[str]) -> str | None:
    """The value most rows share, if one value is held by more rows than any other."""
    counts = Counter(values).most_common()
    return counts[0][0] if len(counts) > 1 and counts[0][1] > max(1, counts[1][1]) else None


def _labels(chosen: tuple[tuple[str, list[str]], ...], n_rows: int) -> list[str]:
    """Each row's `name=value` of the chosen features, but where it has the value most rows share."""
    common = [_common_value(values) for _, values in chosen]
    return [
        ", ".join(f"{name}={values[i]}" for (name, values), usual in zip(chosen, common) if values[i] != usual)
        for i in range(n_rows)
    ]


def distinguishing_labels(identities: list[dict], choices: list[dict]) -> list[str]:
    """For rows sharing a name (their experiments' `identities` and config group `choices`), `key=value, ...` over
    the fewest keys that tell them all apart; a row leaves out a key where it has the value most rows share (""
    for the most common setting)."""
    features = _features(identities, choices)
    for size in range(1, len(features) + 1):
        for chosen in combinations(features, size):
            if len({tuple(values[i] for _, values in chosen) for i in range(len(identities))}) == len(identities):
                return _labels(chosen, len(identities))
    raise AssertionError("two rows of one name and version have the same identity")
