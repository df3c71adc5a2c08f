"""Command-line overrides (`method=kd`, `+debug=tiny`, `~logger`), as Hydra parses them."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The config keys (or groups) `overrides` set: `method`, `method.kappa`, `lr`..."""
    return [override.key_or_group for override in OverridesParser.create().parse_overrides(list(overrides))]
