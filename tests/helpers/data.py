"""Data on disk for the tests: a small learnable MNIST in torchvision's layout, and image folders."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """`array` (values 0-255) as an IDX file of unsigned bytes, what `cl_bench.data.sources.read_idx` reads:
    MNIST-shaped files for the tests and the benchmarks."""
    data = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, data.ndim) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + data.tobytes())


def write_mnist(root: Path) -> Path:
    """root/MNIST/raw/ with MNIST's four IDX files: 300 train and 100 test images, labels 0-9 in turn,
    each image noise under a bright bar whose row says the digit (easy to learn). Returns root."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def picture(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A random RGB picture (width, height), different for every seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_tree(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """An image folder: root/<folder>/<i>.png with counts[folder] random pictures in each folder."""
    seed = 0
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            picture(seed).save(root / folder / f"{i:03d}{suffix}")
            seed += 1
    return root


def save_coloured_picture(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    """A 40x30 picture of `colour` plus noise, saved at `path` (its folders made; JPEG at quality 90)."""
    noise = np.random.default_rng(seed).normal(0, 25, (30, 40, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.array(colour) + noise).clip(0, 255).astype(np.uint8)).save(path, quality=90)


def flip_scan_bytes(path: Path) -> None:
    """Flip (xor 0xFF) 40 bytes of a JPEG's entropy-coded data, 80 bytes after its start-of-scan marker: the
    header stays intact and PIL's `verify` passes, decoding fails ("broken data stream")."""
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xda") + 80
    data[start : start + 40] = bytes(b ^ 0xFF for b in data[start : start + 40])
    path.write_bytes(bytes(data))
