"""Decoded-image cache: every image decoded and resized once into a uint8 file under cache_dir,
memory-mapped by every later run; a file lock makes parallel jobs build it once."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

CACHE_VERSION = 1


def fingerprint(paths: list[str], root: Path, *settings: object) -> str:
    """Hash of the files (path under `root`, size, mtime) and the settings that shape their decoding."""
    digest = hashlib.sha256(repr((CACHE_VERSION, settings)).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


@dataclass
class DecodedImages:
    """uint8 images [N, 3, S, S] (memory-mapped), the positions that failed to decode, and whether
    this call built the cache."""

    images: Tensor
    failed: dict[int, str]
    path: Path
    built: bool


class _Decoding(Dataset):
    """Decodes one path to (image, error); a failed image is zeros with its error."""

    def __init__(self, paths: list[str], decode: Callable[[str], Tensor], shape: tuple[int, int, int]):
        self.paths, self.decode, self.shape = paths, decode, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        try:
            return self.decode(self.paths[i]), ""
        except Exception as error:  # PIL's decode errors take many types; recorded, judged by the caller
            return torch.zeros(self.shape, dtype=torch.uint8), f"{type(error).__name__}: {error}"


def _build(data: Path, meta: Path, paths: list[str], shape: tuple[int, int, int], decode, workers: int) -> None:
    """Decode `paths` in DataLoader workers into `data`; `meta` is written last, marking completion."""
    partial = data.with_suffix(".partial")
    size = len(paths) * shape[0] * shape[1] * shape[2]
    with open(partial, "wb") as file:
        file.truncate(size)
    images = torch.from_file(str(partial), shared=True, size=size, dtype=torch.uint8).view(len(paths), *shape)
    # a private generator: building the cache leaves the global random stream (model init) as reusing it does
    loader = DataLoader(_Decoding(paths, decode, shape), batch_size=64, num_workers=workers,
                        generator=torch.Generator())
    failed: dict[int, str] = {}
    start = 0
    for batch, errors in loader:
        images[start : start + len(batch)] = batch
        failed.update({start + i: e for i, e in enumerate(errors) if e})
        start += len(batch)
    del images
    os.replace(partial, data)
    meta.write_text(json.dumps({"n": len(paths), "shape": list(shape), "failed": failed}))


def decoded_images(
    cache_dir: str, key: str, paths: list[str], shape: tuple[int, int, int], decode: Callable[[str], Tensor],
    workers: int,
) -> DecodedImages:
    """The cache `key` under `cache_dir`, built from `paths` with `decode` (-> uint8 [C, H, W]) unless present."""
    folder = Path(cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    data, meta = folder / f"decoded-{key}.u8", folder / f"decoded-{key}.json"
    with FileLock(str(folder / f"decoded-{key}.lock")):
        built = not meta.exists()
        if built:
            _build(data, meta, paths, shape, decode, workers)
    record = json.loads(meta.read_text())
    size = record["n"] * shape[0] * shape[1] * shape[2]
    images = torch.from_file(str(data), shared=False, size=size, dtype=torch.uint8).view(record["n"], *shape)
    return DecodedImages(images, {int(k): v for k, v in record["failed"].items()}, data, built)
