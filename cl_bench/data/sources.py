"""Labelled image sources held as tensors: MNIST (torchvision's files) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class LabelledImages:
    """Images as float tensors [N, C, H, W] in [0, 1] with integer labels, in a train and a test part."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.train_y.tolist()))


def missing_mnist_files(raw: Path) -> list[str]:
    """The names of MNIST_FILES found in `raw` neither plain nor as .gz."""
    return [f for f in MNIST_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]


def read_idx(path: Path) -> Tensor:
    """An IDX file of unsigned bytes (MNIST's format), plain or gzip-compressed, as a uint8 tensor."""
    data = path.read_bytes() if path.exists() else gzip.decompress(Path(f"{path}.gz").read_bytes())
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad header {data[:4]!r})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).view(*shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """`array` (values 0-255) as an IDX file of unsigned bytes, what `read_idx` reads: MNIST-shaped
    files for the tests and the benchmarks."""
    data = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, data.ndim) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + data.tobytes())


def mnist(root: str, download: bool = False) -> LabelledImages:
    """MNIST from torchvision's layout, `root/MNIST/raw` (fetched by torchvision first if `download`
    and possible); the IDX files are read directly, without importing torchvision."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    if missing_mnist_files(raw) and download:
        from torchvision.datasets import MNIST

        try:
            MNIST(str(Path(root).expanduser()), train=True, download=True)
            MNIST(str(Path(root).expanduser()), train=False, download=True)
        except Exception as error:  # network errors take many forms; the message below says what to do
            print(f"MNIST download failed: {error}")
    missing = missing_mnist_files(raw)
    if missing:
        raise FileNotFoundError(
            f"MNIST files not found in {raw}: {', '.join(missing)} (plain or .gz). Put MNIST's IDX files "
            f"there (torchvision's layout: <data_dir>/MNIST/raw/), set data_dir=<folder holding MNIST/>, "
            f"or pass dataset.<name>.source.download=true on a machine with internet."
        )
    train_x, train_y, test_x, test_y = (read_idx(raw / name) for name in MNIST_FILES)
    return LabelledImages("mnist", _unit_floats(train_x), train_y.long(), _unit_floats(test_x), test_y.long())


def _unit_floats(images: Tensor) -> Tensor:
    """uint8 images [N, H, W] as floats [N, 1, H, W] in [0, 1] (divided in place: one float copy)."""
    return images.unsqueeze(1).float().div_(255.0)


def sklearn_digits(test_fraction: float = 0.2, split_seed: int = 0) -> LabelledImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network), with a seeded
    stratified test part carved out since the set has none."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    test = stratified_take(y, test_fraction, split_seed)
    train = torch.ones(len(y), dtype=torch.bool)
    train[test] = False
    return LabelledImages("sklearn_digits", x[train], y[train], x[test], y[test])


def stratified_take(y: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a seeded random `fraction` of each class's examples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a split fraction must lie in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    taken = []
    for label in torch.unique(y).tolist():
        members = (y == label).nonzero().squeeze(1)
        count = max(1, round(fraction * len(members)))
        taken.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(taken).sort().values
