"""Image-folder tasks (VMMRdb, car colour): one Task over root/<folder>/<image>, its splits read from
the files in DataLoader workers or sliced from a decoded cache; see conf/dataset/vmmr.yaml."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from cl_bench.data.decoded_cache import DecodedImages, decoded_images, fingerprint
from cl_bench.data.image_check import unreadable_images
from cl_bench.data.image_curation import Curated, curated_images, judge, stratified_split
from cl_bench.data.task import Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (L, P, CMYK, RGBA, I;16...) as RGB; transparent pixels composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(path: str, draft: int) -> Image.Image:
    """One file as an RGB image: JPEGs decoded at the smallest DCT scale keeping both sides >= `draft`. The
    loader's decoding, and the check of every file before training (image_check)."""
    with Image.open(path) as image:
        image.draft("RGB", (draft, draft))
        return to_rgb(image)


def centre_crop(image: Image.Image, resize_to: int, size: int) -> Image.Image:
    """The shorter side resized to `resize_to`, then the centre `size` x `size` crop: the pixels of
    v2.Compose([v2.Resize(resize_to), v2.CenterCrop(size)]) without the transforms' per-call dispatch
    (docs/performance.md#the-image-loader)."""
    return tvf.center_crop(tvf.resize(image, [resize_to]), [size])


def read_image(path: str, transform: Callable[[Image.Image], Image.Image], draft: int) -> Tensor:
    """One file as uint8 [3, H, W]: `decode_image`, then `transform`ed."""
    try:
        return tvf.pil_to_tensor(transform(decode_image(path, draft)))
    except Exception as error:  # PIL's decode errors take many types; re-raised naming the file
        raise OSError(f"cannot decode {path}: {type(error).__name__}: {error} (it passed the check of every file "
                      f"before training, so it changed since: restore it, or remove it and run again)") from error


@dataclass(frozen=True)
class ImageSpec:
    """How a split's images are decoded and prepared."""

    image_size: int
    resize: int
    crop_scale: tuple[float, float]
    workers: int

    def transform(self, augment: bool) -> Callable[[Image.Image], Image.Image]:
        """Train: random resized crop + flip; eval: shorter side to `resize`, centre crop."""
        if augment:
            crop = v2.RandomResizedCrop(self.image_size, self.crop_scale, CROP_RATIO)
            return v2.Compose([crop, v2.RandomHorizontalFlip()])
        return partial(centre_crop, resize_to=self.resize, size=self.image_size)

    def reader(self, augment: bool) -> Callable[[str], Tensor]:
        return partial(read_image, transform=self.transform(augment), draft=self.resize)

    def decoder(self) -> Callable[[str], Image.Image]:
        """`decode_image` at this spec's draft size: what `reader` decodes before its transform."""
        return partial(decode_image, draft=self.resize)


def crop_boxes(n: int, size: int, scale: tuple[float, float]) -> Tensor:
    """[n, 4] boxes (x1, y1, x2, y2) drawn as torchvision's RandomResizedCrop draws them (10 tries
    of area and aspect ratio, else the whole image) in a size x size image."""
    area = torch.empty(n, 10).uniform_(*scale) * size * size
    ratio = torch.exp(torch.empty(n, 10).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
    fits = (w <= size) & (h <= size)
    first = fits.int().argmax(1, keepdim=True)
    w = torch.where(fits.any(1), w.gather(1, first).squeeze(1), float(size))
    h = torch.where(fits.any(1), h.gather(1, first).squeeze(1), float(size))
    x1, y1 = torch.rand(n) * (size - w), torch.rand(n) * (size - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def augment_batch(x: Tensor, scale: tuple[float, float]) -> Tensor:
    """Random resized crop (bilinear, averaged when shrinking, via roi_align) and horizontal flip
    of a float batch [N, C, S, S], on its device."""
    n, size = len(x), x.shape[-1]
    boxes = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], crop_boxes(n, size, scale)], 1)
    out = roi_align(x, boxes.to(x, non_blocking=True), (size, size), aligned=True)
    flip = (torch.rand(n) < 0.5).to(x.device, non_blocking=True)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


class _Files(Dataset):
    """(uint8 image, label) of each file of a split."""

    def __init__(self, paths: list[str], labels: Tensor, read: Callable[[str], Tensor]):
        self.paths, self.labels, self.read = paths, labels, read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.read(self.paths[i]), self.labels[i]


class _SettableBatches:
    """A batch sampler whose index batches are set before each pass, so one persistent DataLoader
    serves every `batches` / `eval_batches` call."""

    def __init__(self) -> None:
        self.batches: Iterable[Tensor] = ()

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch in self.batches)


class ImageSplit:
    """A split of image files. Files are read in DataLoader workers (`batches`, `eval_batches`) or
    threads (`gather`), or sliced from a decoded cache (`cache`, `rows`: this split's rows of it);
    uint8 batches are normalised, and cached ones augmented, on the split's device."""

    def __init__(self, paths: list[str], labels: Tensor, spec: ImageSpec, augment: bool,
                 cache: Tensor | None = None, rows: Tensor | None = None, device: torch.device | None = None):
        self.paths, self.labels, self.spec, self.augment = paths, labels, spec, augment
        self.cache, self.rows = cache, rows
        self.device = device or torch.device("cpu")
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        self._loaders: dict[str, DataLoader] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def deterministic(self) -> bool:
        return not self.augment

    def to(self, device: torch.device) -> "ImageSplit":
        return ImageSplit(self.paths, self.labels, self.spec, self.augment, self.cache, self.rows, torch.device(device))

    def _finish(self, x: Tensor, y: Tensor, augment: bool) -> tuple[Tensor, Tensor]:
        """uint8 batch on the device, normalised; augmented when asked (cached images)."""
        x = x.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if augment:
            x = augment_batch(x, self.spec.crop_scale)
        return x, y.to(self.device, non_blocking=True)

    def _cached(self, index: Tensor) -> Tensor:
        """The cached images of this split's examples `index` (on the host), gathered into page-locked memory when
        the split is on CUDA, so that their copy to the device runs asynchronously."""
        rows = self.rows[index]
        if self.device.type != "cuda":
            return self.cache[rows]
        pinned = torch.empty((len(rows), *self.cache.shape[1:]), dtype=self.cache.dtype, pin_memory=True)
        return torch.index_select(self.cache, 0, rows, out=pinned)

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.cpu()
        if self.cache is not None:
            return self._finish(self._cached(index), self.labels[index], self.augment)
        read = self.spec.reader(self.augment)
        with ThreadPoolExecutor(max(1, self.spec.workers)) as pool:
            images = list(pool.map(read, [self.paths[i] for i in index.tolist()]))
        return self._finish(torch.stack(images), self.labels[index], False)

    def _loader(self, purpose: str, augment: bool) -> DataLoader:
        """This split's persistent DataLoader for training or evaluation passes. Each pass draws its
        workers' seed from the global random stream only when augmenting: otherwise reading the files
        leaves that stream (the head growth of later tasks) as the decoded cache does."""
        if purpose not in self._loaders:
            workers = self.spec.workers
            self._loaders[purpose] = DataLoader(
                _Files(self.paths, self.labels, self.spec.reader(augment)),
                batch_sampler=_SettableBatches(),
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                generator=None if augment else torch.Generator(),
            )
        return self._loaders[purpose]

    def _load(self, index_batches: Iterable[Tensor], purpose: str, augment: bool) -> Iterator[tuple[Tensor, Tensor]]:
        if self.cache is not None:
            for index in index_batches:
                index = index.cpu()
                yield self._finish(self._cached(index), self.labels[index], augment)
            return
        loader = self._loader(purpose, augment)
        loader.batch_sampler.batches = index_batches
        for x, y in loader:
            yield self._finish(x, y, False)

    def batches(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        return self._load(index_batches, "train", self.augment)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        starts = range(0, len(self), batch_size)
        return self._load((torch.arange(s, min(s + batch_size, len(self))) for s in starts), "eval", False)


def _with_cache(curated: Curated, parts: dict[str, Tensor], spec: ImageSpec, cache_dir: str, on_corrupt: str,
                root: Path) -> tuple[DecodedImages, dict[str, Tensor]]:
    """The decoded cache of the curated images, and `parts` without the images that failed to decode."""
    key = fingerprint(curated.paths, root, spec.image_size, spec.resize)
    shape = (3, spec.image_size, spec.image_size)
    cached = decoded_images(cache_dir, key, curated.paths, shape, spec.reader(False), spec.workers)
    failed = {curated.paths[i]: error for i, error in cached.failed.items()}
    judge(failed, on_corrupt)
    curated.unreadable.update(failed)
    failed_rows = torch.tensor(sorted(cached.failed), dtype=torch.long)
    return cached, {k: rows[~torch.isin(rows, failed_rows)] for k, rows in parts.items()}


def _counting(value: object) -> bool:
    """Whether `value` is a whole number >= 1 (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def image_folder_tasks(
    name: str,
    root: str,
    class_pattern: str = ".+",
    class_group: str = "{folder}",
    top_k: int | None = None,
    min_images: int = 1,
    image_size: int = 224,
    resize: int | None = None,
    augment: bool = False,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    split: Mapping[str, float] | None = None,
    split_seed: int = 0,
    on_corrupt: str = "skip",
    decoded_cache: bool = False,
    cache_dir: str | None = None,
    workers: int = 2,
) -> list[Task]:
    """One task over the image folder `root` (root/<folder>/<image>): classes named from folder names
    (`class_group` formatted with `class_pattern`'s named groups), curated to the `top_k` largest
    with >= `min_images`, split per class (`split`: val and test fractions)."""
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"dataset.{name}.on_corrupt={on_corrupt!r}: must be 'skip' or 'error'")
    if not _counting(min_images):
        raise ValueError(f"dataset.{name}.min_images={min_images!r}: must be a whole number >= 1 (a class needs "
                         f"images)")
    if top_k is not None and not _counting(top_k):
        raise ValueError(f"dataset.{name}.top_k={top_k!r}: must be a whole number >= 1, or null for every class")
    if decoded_cache and not cache_dir:
        raise ValueError(f"dataset.{name}.decoded_cache=true needs a cache_dir")
    fractions = {"val": 0.1, "test": 0.1, **(split or {})}
    root_path = Path(root).expanduser()
    spec = ImageSpec(image_size, resize or image_size, tuple(crop_scale), workers)
    unreadable_of = partial(unreadable_images, root=root_path, decode=spec.decoder(), settings=(spec.resize,),
                            workers=workers, cache_dir=cache_dir)
    curated = curated_images(root_path, class_pattern, class_group, top_k, min_images, on_corrupt, unreadable_of)
    parts = stratified_split(curated.labels, curated.classes, fractions["val"], fractions["test"], split_seed)
    info: dict = {}
    cache = None
    if decoded_cache:
        cached, parts = _with_cache(curated, parts, spec, cache_dir, on_corrupt, root_path)
        cache, info["decoded_cache"] = cached.images, {"path": str(cached.path), "built": cached.built}
    kept = torch.bincount(curated.labels[torch.cat(list(parts.values()))], minlength=len(curated.classes))
    info.update(root=str(root_path), classes=curated.classes, class_counts=dict(zip(curated.classes, kept.tolist())),
                dropped_classes=curated.dropped, unmatched_folders=curated.unmatched,
                split_sizes={k: len(v) for k, v in parts.items()},
                skipped=len(curated.unreadable), skipped_files=sorted(curated.unreadable))

    def make(part: str) -> ImageSplit:
        rows = parts[part]
        return ImageSplit([curated.paths[i] for i in rows.tolist()], curated.labels[rows], spec,
                          augment and part == "train", cache, rows if cache is not None else None)

    shape = (3, image_size, image_size)
    return [Task(name, make("train"), make("val"), make("test"), curated.classes, shape, info)]
