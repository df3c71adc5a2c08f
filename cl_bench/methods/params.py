"""Checks of a method's constructor arguments, the one place a method parameter is checked: each bad
value a ConfigError naming `method.<key>`, raised when the method is built, before any data is read.
What depends on the data is the method's `check(tasks)`. A method combined under `plus` has its errors
renamed to its own keys (`under`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from cl_bench.errors import ConfigError


def under(prefix: str, error: ConfigError) -> ConfigError:
    """`error`, which names the method's keys `method.<key>`, naming them `<prefix>.<key>` (`plus.replay`)."""
    return ConfigError(re.sub(r"\bmethod\.(?=\w)", f"{prefix}.", str(error)))


def number(key: str, value: float, rule: str, ok: Callable[[float], bool]) -> float:
    """A finite number for which `ok` holds; `rule` says which in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"method.{key}={value!r}: must be a finite number {rule}")
    return float(value)


def count(key: str, value: int) -> int:
    """An integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"method.{key}={value!r}: must be an integer ≥ 1")
    return value


def flag(key: str, value: bool) -> bool:
    """True or false (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise ConfigError(f"method.{key}={value!r}: must be true or false")
    return value


def choice(key: str, value: str, choices: tuple[str, ...], renamed: Mapping[str, str] | None = None) -> str:
    """One of `choices`; a value `renamed` maps (an old name to its new one) is refused naming the new one.
    YAML and Hydra read an unquoted true or false as a boolean: it is matched as "true" or "false"."""
    old = str(value).lower() if isinstance(value, bool) else value
    if renamed and isinstance(old, str) and old in renamed:
        raise ConfigError(f"method.{key}={old!r}: now called {renamed[old]} (method.{key}={renamed[old]})")
    if value not in choices:
        raise ConfigError(f"method.{key}={value!r}: choose one of {', '.join(choices)}")
    return value


def together(ok: bool, key: str, value: object, need: str) -> None:
    """A value that works only with some values of the other parameters; `need` says which."""
    if not ok:
        raise ConfigError(f"method.{key}={value}: {need}")


def within_tasks(key: str, samples: int | None, tasks: list) -> None:
    """`samples` examples (None: all) fit in the training split of every task whose importance a later
    task uses (all but the last)."""
    for task in tasks[:-1]:
        if samples is not None and samples > len(task.train):
            raise ConfigError(
                f"method.{key}={samples}: task {task.name!r} has only {len(task.train)} training examples; "
                f"choose at most {len(task.train)}"
            )
