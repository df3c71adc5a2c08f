"""Checks of a method's constructor arguments: each bad value a ValueError naming `method.<key>`
(the run turns it into a ConfigError before any data is read)."""

from __future__ import annotations

import math
from typing import Callable


def number(key: str, value: float, rule: str, ok: Callable[[float], bool]) -> float:
    """A finite number for which `ok` holds; `rule` says which in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"method.{key}={value!r}: must be a finite number {rule}")
    return float(value)


def count(key: str, value: int) -> int:
    """An integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"method.{key}={value!r}: must be an integer ≥ 1")
    return value


def flag(key: str, value: bool) -> bool:
    """True or false (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise ValueError(f"method.{key}={value!r}: must be true or false")
    return value


def choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    """One of `choices`."""
    if value not in choices:
        raise ValueError(f"method.{key}={value!r}: must be one of {', '.join(choices)}")
    return value
