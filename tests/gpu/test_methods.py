"""GPU tier: every method, and a few combinations, in every scenario it is defined in, a few steps on the device, gives
what the same run gives on the CPU (the CPU twin of each case runs it once and compares it with itself)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra.utils import get_class

from tests.helpers.config import TINY, compose_config
from tests.helpers.devices import ACCURACY_ATOL, DEVICES, LOSS_ATOL, LOSS_RTOL, on
from tests.helpers.methods import COMBINATIONS, EVERY_METHOD, method_names
from tests.helpers.runs import tiny_run

FEW_STEPS = ["first_task.steps=6", "steps=6", "eval_every=3", "first_task.cache=false"]


def scenarios_of(name: str) -> tuple[str, ...]:
    """The scenarios the method conf/method/<name>.yaml is defined in."""
    return get_class(compose_config(TINY, f"method={name}").method._target_).scenarios


def in_scenario(name: str, scenario: str) -> list[str]:
    """EVERY_METHOD's overrides of method `name` (with what it needs, e.g. RtF's model=vae) in `scenario`."""
    return [*(key for key in EVERY_METHOD[name] if not key.startswith("scenario=")), f"scenario={scenario}"]


CASES = [(in_scenario(name, scenario), f"{name}-{scenario}")
         for name in method_names() for scenario in scenarios_of(name)]
CASES += [(list(EVERY_METHOD[name]), name) for name in COMBINATIONS]


def metrics(tmp_path, name: str, device: str, overrides: list[str]) -> pd.DataFrame:
    summary, run_dir = tiny_run(tmp_path, *on(device), *FEW_STEPS, *overrides, name=name)
    assert summary["status"] == "ok", summary.get("error")
    assert summary["device"].startswith(device)
    return pd.read_json(run_dir / "metrics.jsonl", lines=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides", [case for case, _ in CASES], ids=[name for _, name in CASES])
def test_a_method_on_the_device_gives_what_it_gives_on_the_cpu(tmp_path, overrides, device):
    on_cpu = metrics(tmp_path, "cpu", "cpu", overrides)
    on_device = on_cpu if device == "cpu" else metrics(tmp_path, device, device, overrides)
    assert on_device.columns.tolist() == on_cpu.columns.tolist()
    assert on_device["step"].tolist() == on_cpu["step"].tolist()
    losses = [c for c in on_cpu.columns if c.startswith("loss/")]
    accuracies = [c for c in on_cpu.columns if c.startswith("val")]
    assert np.allclose(on_device[losses], on_cpu[losses], rtol=LOSS_RTOL, atol=LOSS_ATOL, equal_nan=True)
    assert np.allclose(on_device[accuracies], on_cpu[accuracies], rtol=0, atol=ACCURACY_ATOL, equal_nan=True)
