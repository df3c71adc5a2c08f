"""Model options a config may give as `auto`, which the run resolves for its device
(`cl_bench.engine.device.device_model_options`): their rule, for the config and for the model."""

from __future__ import annotations

from cl_bench.core.errors import ConfigError


def check_channels_last(value: object, resolved: bool = False) -> None:
    """`model.channels_last`: true or false, or `auto` until the run has resolved it (`resolved`)."""
    if isinstance(value, bool) or (value == "auto" and not resolved):
        return
    allowed = "true or false (auto is resolved by the run)" if resolved else "true, false or auto"
    raise ConfigError(f"model.channels_last={value!r}: choose {allowed}")
