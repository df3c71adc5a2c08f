"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from torchvision's python-pickle files under `root`
(`cifar-10-batches-py/`, `cifar-100-python/`), read by torchvision's own CIFAR10 / CIFAR100 classes (their
checksums verified), held as float tensors [N, 3, 32, 32] in [0, 1], then normalised per channel when a
`mean` and `std` are given (the configs give Mammoth's seq-cifar10 / seq-cifar100 values)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from cl_bench.core.errors import ConfigError
from cl_bench.data.sources import LabelledImages


def cifar10(
    root: str, download: bool = False, mean: list[float] | None = None, std: list[float] | None = None
) -> LabelledImages:
    """CIFAR-10's 50,000 train and 10,000 test images (10 classes) from `root/cifar-10-batches-py/`."""
    return read_cifar(CIFAR10, "cifar10", root, download, mean, std)


def cifar100(
    root: str, download: bool = False, mean: list[float] | None = None, std: list[float] | None = None
) -> LabelledImages:
    """CIFAR-100's 50,000 train and 10,000 test images with their 100 fine labels from `root/cifar-100-python/`."""
    return read_cifar(CIFAR100, "cifar100", root, download, mean, std)


def cifar_files(dataset: type[CIFAR10]) -> list[str]:
    """The file names torchvision's `dataset` class reads from its folder: the batches and the meta file."""
    return [name for name, _ in dataset.train_list + dataset.test_list] + [dataset.meta["filename"]]


def read_cifar(
    dataset: type[CIFAR10], name: str, root: str, download: bool, mean: list[float] | None, std: list[float] | None
) -> LabelledImages:
    """The train and test parts of torchvision's `dataset` (CIFAR10 or CIFAR100) under `root`; fetched by
    torchvision first if `download` and any file is missing. Missing or corrupt files are a ConfigError."""
    scale = _normalisation(name, mean, std)
    home = Path(root).expanduser()
    folder = home / dataset.base_folder
    if download and _missing(dataset, folder):
        try:
            dataset(str(home), train=True, download=True)
        except Exception as error:  # noqa: BLE001 (network errors take many forms; the message below says what to do)
            print(f"{dataset.__name__} download failed: {error}")
    missing = _missing(dataset, folder)
    if missing:
        raise ConfigError(
            f"{dataset.__name__} files not found in {folder}: {', '.join(missing)}. Fetch them where there is internet "
            f"with python -c \"from torchvision.datasets import {dataset.__name__}; {dataset.__name__}('{home}', "
            f"download=True)\" (or copy the {dataset.base_folder}/ folder there), set data_dir=<folder holding "
            f"{dataset.base_folder}/>, or pass dataset.<name>.source.download=true on a machine with internet"
        )
    try:
        train, test = dataset(str(home), train=True), dataset(str(home), train=False)
    except RuntimeError as error:  # torchvision's checksum test failed
        raise ConfigError(
            f"{dataset.__name__} files in {folder} fail torchvision's checksum ({error}): delete the folder and "
            f"fetch them again"
        ) from None
    train_x, test_x = (_unit_floats(torch.from_numpy(part.data)) for part in (train, test))
    if scale is not None:
        for x in (train_x, test_x):
            x.sub_(scale[0]).div_(scale[1])
    train_y, test_y = (torch.tensor(part.targets, dtype=torch.long) for part in (train, test))
    return LabelledImages(name, train_x, train_y, test_x, test_y)


def _missing(dataset: type[CIFAR10], folder: Path) -> list[str]:
    return [name for name in cifar_files(dataset) if not (folder / name).is_file()]


def _unit_floats(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, H, W, C] (torchvision's CIFAR layout) as contiguous floats [N, C, H, W] in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _normalisation(
    name: str, mean: list[float] | None, std: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) as [1, 3, 1, 1] tensors, or None when both are null; anything else is refused."""
    if mean is None and std is None:
        return None
    values = {"mean": mean, "std": std}
    for key, value in values.items():
        numbers = list(value) if value is not None and not isinstance(value, (str, bytes)) else []
        if len(numbers) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ConfigError(
                f"dataset.<name>.source.{key}={value!r} ({name}): give three numbers (one per RGB channel) for "
                f"both mean and std, "
                f"or null for both (inputs left in [0, 1])"
            )
    if min(std) <= 0:
        raise ConfigError(f"dataset.<name>.source.std={list(std)} ({name}): every channel's std must be > 0")
    return tuple(torch.tensor([float(v) for v in values[key]]).view(1, 3, 1, 1) for key in ("mean", "std"))
