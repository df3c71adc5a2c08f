"""Checks of a method's constructor arguments: each bad value a ConfigError naming `method.<key>` (the rules are
core/checks.py's), raised when the method is built, before any data is read.
What depends on the data is the method's `check(tasks)`. A method combined under `plus` has its errors
renamed to its own keys (`under`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from cl_bench.core import checks
from cl_bench.core.errors import ConfigError


def under(prefix: str, error: ConfigError) -> ConfigError:
    """`error`, which names the method's keys `method.<key>`, naming them `<prefix>.<key>` (`plus.replay`)."""
    return ConfigError(re.sub(r"\bmethod\.(?=\w)", f"{prefix}.", str(error)))


def number(key: str, value: float, rule: str, ok: Callable[[float], bool]) -> float:
    """A finite number for which `ok` holds; `rule` says which in the message."""
    return checks.number(f"method.{key}", value, rule, ok)


def count(key: str, value: int) -> int:
    """An integer ≥ 1."""
    return checks.integer(f"method.{key}", value, 1)


def counts(key: str, value: Sequence[int]) -> list[int]:
    """A non-empty list of integers ≥ 1 (layer sizes)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"method.{key}={value}: give a non-empty list of integers ≥ 1, e.g. [400, 400]")
    return [count(key, size) for size in value]


def flag(key: str, value: bool) -> bool:
    """True or false (not a truthy string or number)."""
    return checks.flag(f"method.{key}", value)


def choice(key: str, value: str, choices: tuple[str, ...], renamed: Mapping[str, str] | None = None) -> str:
    """One of `choices` (core.checks.choice)."""
    return checks.choice(f"method.{key}", value, choices, renamed)


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
