"""The fixtures; what they are built on is in tests/helpers/."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers.config import compose_config
from tests.helpers.data import write_mnist
from tests.helpers.devices import NO_CUDA


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C raises KeyboardInterrupt here and in the processes the tests start (the SLURM tests send it),
    even when the tests run as a background job, which starts with SIGINT ignored and passes that on.

    Under pytest-xdist (`-n N`), worker k of N keeps to its own share of the cores, and so do the
    processes it starts (they inherit the affinity, and `threads=auto` gives them that many threads): two
    workers never fight over a core, which slows a torch process many-fold."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    share = sorted(os.sched_getaffinity(0))[int(worker.removeprefix("gw")) :: int(count)]
    if share:  # more workers than cores: they share them all
        os.sched_setaffinity(0, share)
        torch.set_num_threads(len(share))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The GPU tier (tests marked `gpu`) is skipped, with its reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def make_config(tmp_path):
    """Compose conf/config.yaml with overrides, outputs and data_dir under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(*overrides, output_root=tmp_path / "outputs", data_dir=tmp_path / "data")

    return make


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    """A data_dir holding a small MNIST in torchvision's layout (tests.helpers.data.write_mnist)."""
    return write_mnist(tmp_path / "data")


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and lose much when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
