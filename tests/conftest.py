"""The fixtures; what they are built on is in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers.config import compose_config
from tests.helpers.data import write_mnist


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
