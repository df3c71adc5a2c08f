"""Shared fixtures: composing the real Hydra config, small runs, and MNIST-format files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cl_bench import CONFIG_DIR

# A run small enough for a unit test: two short tasks on the embedded digits.
FAST = ["first_task.steps=30", "steps=30", "eval_every=10", "threads=1"]


@pytest.fixture
def make_config(tmp_path):
    """Compose conf/config.yaml with overrides, outputs under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(
                config_name="config",
                overrides=[f"output_root={tmp_path / 'outputs'}", f"data_dir={tmp_path / 'data'}", *overrides],
            )

    return make


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write `array` (uint8) in MNIST's IDX format."""
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    """A data_dir holding a small MNIST in torchvision's layout: 200 train and 50 test images per split."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28))
        for i, label in enumerate(labels):  # a bright bar whose row says the digit: learnable
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and lose much when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
