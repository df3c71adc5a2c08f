"""GPU tier: the two-cities experiment on generated image folders (tests/test_two_cities.py's, at 32x32) on the
device, its images read by DataLoader workers (pinned memory, non-blocking copies on CUDA) or from the decoded cache a
CPU run built (its key does not depend on the device): equal results either way, as on the CPU."""

from __future__ import annotations

import pytest
import torch

from cl_bench.engine.run import run_experiment
from tests.helpers.config import compose_config
from tests.helpers.devices import DEVICES
from tests.test_two_cities import CACHED, SMALL, data_dir  # noqa: F401 (data_dir: the image folders' fixture)

WORKERS = ["dataset.vmmr.workers=2", "dataset.car_color.workers=2"]


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic algorithms: its default ones may sum in a varying order from run to run (the same
    arithmetic, rounded otherwise), and this test compares two runs bit for bit."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = before


@pytest.mark.parametrize("device", DEVICES)
def test_two_cities_on_the_device_from_workers_or_from_the_cpus_decoded_cache(data_dir, tmp_path, device,  # noqa: F811
                                                                           deterministic_cudnn):
    def run(name: str, *overrides: str) -> dict:
        cfg = compose_config(*SMALL, *overrides, "first_task.cache=false", output_root=tmp_path, data_dir=data_dir)
        summary = run_experiment(cfg, tmp_path / name)
        assert summary["status"] == "ok", summary.get("error")
        return summary

    run("built_on_cpu", *CACHED, "device=cpu")
    from_cache = run("from_cache", *CACHED, f"device={device}")
    from_files = run("from_files", *WORKERS, f"device={device}")
    assert from_cache["device"].startswith(device) and from_files["device"].startswith(device)
    tasks = (tmp_path / "from_cache" / "tasks.json").read_text()
    assert '"built": false' in tasks and '"built": true' not in tasks  # both tasks' images from the CPU run's cache
    assert (tmp_path / "from_cache" / "metrics.jsonl").read_text() == (tmp_path / "from_files" / "metrics.jsonl").read_text()
