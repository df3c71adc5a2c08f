"""Labelled image sources held as tensors: MNIST (torchvision's files) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_IMAGE_SHAPE = (28, 28)
MNIST_CLASSES = 10
REFETCH_MNIST = ("fetch MNIST again (dataset.<name>.source.download=true on a machine with internet, or copy "
                 "MNIST's original files into the folder)")


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
    """An IDX file of unsigned bytes (MNIST's format) as a uint8 tensor of its header's shape, gzip-decompressed
    when its name ends in .gz. A file that is not one, or whose data is longer or shorter than its header's
    shape, raises a ValueError naming it."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad header {data[:4]!r})")
    start = 4 + 4 * data[3]
    if len(data) < start:
        raise ValueError(f"{path}: cut within its IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{data[3]}I", data[4:start])
    if len(data) - start != math.prod(shape):
        raise ValueError(f"{path}: {len(data) - start} bytes of data where its header's shape {list(shape)} "
                         f"needs {math.prod(shape)} (the file is cut or padded)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=start).view(*shape)


def mnist(root: str, download: bool = False) -> LabelledImages:
    """MNIST from torchvision's layout, `root/MNIST/raw` (fetched by torchvision first if `download`
    and possible); the IDX files are read directly, without importing torchvision, and checked
    (`mnist_pair`) before any training."""
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
    train_x, train_y = mnist_pair(*(mnist_file(raw, name) for name in MNIST_FILES[:2]))
    test_x, test_y = mnist_pair(*(mnist_file(raw, name) for name in MNIST_FILES[2:]))
    return LabelledImages("mnist", _unit_floats(train_x), train_y.long(), _unit_floats(test_x), test_y.long())


def mnist_file(raw: Path, name: str) -> Path:
    """The file of MNIST_FILES' `name` in `raw`: plain, or else .gz."""
    return raw / name if (raw / name).exists() else raw / f"{name}.gz"


def mnist_pair(images_file: Path, labels_file: Path) -> tuple[Tensor, Tensor]:
    """MNIST's images [N, 28, 28] and labels [N] (0-9) from an IDX pair; any other content raises a
    ValueError naming the file and what to do."""
    try:
        images, labels = read_idx(images_file), read_idx(labels_file)
    except ValueError as error:
        raise ValueError(f"{error}: delete it and {REFETCH_MNIST}") from None
    expected = ", ".join(map(str, MNIST_IMAGE_SHAPE))
    if images.dim() != 3 or tuple(images.shape[1:]) != MNIST_IMAGE_SHAPE:
        raise ValueError(f"{images_file}: images of shape {list(images.shape)}, expected [N, {expected}]: "
                         f"delete it and {REFETCH_MNIST}")
    if labels.dim() != 1:
        raise ValueError(f"{labels_file}: labels of shape {list(labels.shape)}, expected [N]: "
                         f"delete it and {REFETCH_MNIST}")
    outside = (labels >= MNIST_CLASSES).nonzero().squeeze(1)
    if len(outside):
        first = int(outside[0])
        raise ValueError(f"{labels_file}: {len(outside)} label(s) outside 0-{MNIST_CLASSES - 1}, e.g. "
                         f"{int(labels[first])} at position {first}: delete it and {REFETCH_MNIST}")
    if len(images) != len(labels):
        raise ValueError(f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels: "
                         f"delete both and {REFETCH_MNIST}")
    return images, labels


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
