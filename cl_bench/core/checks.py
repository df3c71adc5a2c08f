"""The rules a config value is checked by, each a ConfigError naming the key, the value and what is allowed
(`key=value: must be …`, `key=value: choose …`): the one place they are written, for the config's keys
(engine/validate.py) and for the methods' parameters (methods/params.py)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from cl_bench.core.errors import ConfigError


def is_number(value: Any, ok: Callable[[float], bool] = lambda v: True) -> bool:
    """A real number (not a boolean) for which `ok` holds."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and ok(value)


def is_integer(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def number(key: str, value: Any, rule: str, ok: Callable[[float], bool], finite: bool = True) -> float:
    """A number for which `ok` holds; `rule` says which in the message. `finite`: NaN and infinities are this
    check's to refuse (the message says "finite number"); false where the caller has refused them already."""
    if not is_number(value, ok) or (finite and not math.isfinite(value)):
        raise ConfigError(f"{key}={value!r}: must be a {'finite ' if finite else ''}number {rule}")
    return float(value)


def integer(key: str, value: Any, minimum: int) -> int:
    """An integer ≥ `minimum`."""
    if not is_integer(value, minimum):
        raise ConfigError(f"{key}={value!r}: must be an integer ≥ {minimum}")
    return value


def positive(key: str, value: Any, kind: type = float) -> None:
    """A number (an integer for `kind=int`) > 0."""
    if not is_number(value) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r}: must be a positive {'integer' if kind is int else 'number'}")
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be > 0")


def flag(key: str, value: Any) -> bool:
    """True or false (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be true or false")
    return value


def choice(key: str, value: Any, choices: tuple[str, ...], renamed: Mapping[str, str] | None = None) -> str:
    """One of `choices`; a value `renamed` maps (an old name to its new one) is refused naming the new one.
    YAML and Hydra read an unquoted true or false as a boolean: it is matched as "true" or "false"."""
    old = str(value).lower() if isinstance(value, bool) else value
    if renamed and isinstance(old, str) and old in renamed:
        raise ConfigError(f"{key}={old!r}: now called {renamed[old]} ({key}={renamed[old]})")
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: choose one of {', '.join(choices)}")
    return value


def parameter_of(key: str, target: Callable) -> str | None:
    """The parameter of `target` a config key names: the key itself, or the key with the underscore that makes a
    Python keyword a name (`lambda` → `lambda_`); None for none."""
    parameters = inspect.signature(target).parameters
    return next((name for name in (key, f"{key}_") if name in parameters and name != "self"), None)


def known_parameters(prefix: str, node: Mapping[str, Any], target: Callable,
                     set_by_run: Mapping[str, str] = {}) -> None:
    """Every key of the `prefix` node (but `_target_` and the like) is a parameter of `target` that the run does
    not pass itself (`set_by_run`: parameter -> what sets it)."""
    accepted = [name for name in inspect.signature(target).parameters if name != "self" and name not in set_by_run]
    for key in node:
        if key in set_by_run:
            raise ConfigError(f"{prefix}.{key}={node[key]}: set by {set_by_run[key]}, not in the {prefix} node")
        if not key.startswith("_") and parameter_of(key, target) not in accepted:
            names = ", ".join(name.rstrip("_") for name in accepted)
            allowed = f"it takes: {names}" if accepted else "it takes no parameters"
            raise ConfigError(f"{prefix}.{key}: {target.__name__} takes no such parameter ({allowed})")
