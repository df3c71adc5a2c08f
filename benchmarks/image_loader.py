"""Throughput of the image-folder loader and of ResNet-18 training on this machine: images/s of a pass of training
batches read from the JPEG files and from the decoded cache at each worker count (per worker too), of building the
cache, and of ResNet-18 training steps on random batches.

    python benchmarks/image_loader.py                     # 2,000 generated 640x480 photo JPEGs in a temp folder
    python benchmarks/image_loader.py --root ~/data/vmmrdb --images 0
    python benchmarks/image_loader.py --parts loader --workers 1 2 --rounds 3 --json loader.json

The generated JPEGs are crops of scikit-learn's two sample photographs (china.jpg, flower.jpg), colour-shifted and
resized to `--size`, saved at quality 90: about 75 KB at 640x480, VMMRdb's usual size, so that decoding costs what a
photograph's does (noise or flat colour would decode slower or faster than a photograph).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cl_bench.data.image_folder import image_folder_tasks
from cl_bench.models.resnet import resnet18

PHOTOS = ("china.jpg", "flower.jpg")  # scikit-learn's sample images (640x427)
PARTS = ("loader", "train")


def generate(root: Path, n_images: int, n_classes: int = 10, size: tuple[int, int] = (640, 480)) -> None:
    """`n_images` photo JPEGs of `size` (width, height) in `n_classes` folders named like VMMRdb's."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(0)
    photos = [Image.fromarray(load_sample_image(name)) for name in PHOTOS]
    for i in range(n_images):
        photo = photos[i % len(photos)]
        fraction = rng.uniform(0.5, 0.9)
        w, h = int(photo.width * fraction), int(photo.height * fraction)
        x, y = int(rng.integers(0, photo.width - w)), int(rng.integers(0, photo.height - h))
        crop = np.asarray(photo.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC), dtype=np.float32)
        shifted = (crop * rng.uniform(0.7, 1.3, 3)).clip(0, 255).astype(np.uint8)
        folder = root / f"make{i % n_classes}_model_2004"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shifted).save(folder / f"{i:05d}.jpg", quality=90)


def loader_rate(root: Path, image_size: int, workers: int, batch_size: int, device: str = "cpu",
                **options) -> float:
    """Images/s of one pass of training batches over the train split, normalised on `device` (task construction
    and the workers' start excluded: a first batch is read before the clock starts)."""
    (task,) = image_folder_tasks("bench", str(root), image_size=image_size, workers=workers, **options)
    split = task.train.to(torch.device(device))
    n = len(split) // batch_size * batch_size
    index_batches = list(torch.randperm(len(split))[:n].split(batch_size))
    for _ in split.batches(index_batches[:1]):
        pass
    gc.collect()  # an earlier measurement's loader and its workers go now, not while this one is timed
    started = time.perf_counter()
    for x, _ in split.batches(index_batches[1:]):
        pass
    x.sum().item()  # the last batch on the device (the copies run asynchronously on CUDA)
    return (n - batch_size) / (time.perf_counter() - started)


def cache_build_rate(root: Path, image_size: int, workers: int, cache_dir: Path) -> float:
    """Images/s of building the decoded cache (listing and the first check of every file included)."""
    started = time.perf_counter()
    (task,) = image_folder_tasks("bench", str(root), image_size=image_size, workers=workers,
                                 decoded_cache=True, cache_dir=str(cache_dir))
    assert task.info["decoded_cache"]["built"]
    return sum(task.info["split_sizes"].values()) / (time.perf_counter() - started)


def loader_rates(root: Path, image_size: int, workers: list[int], batch_size: int, rounds: int, cache_dir: Path,
                 device: str = "cpu") -> dict[str, dict[int, float]]:
    """Median images/s over `rounds` alternated passes onto `device`, from the files and from the decoded cache, by
    worker count; and (under "build", at the most workers) of building the cache, the first check of every file
    included."""
    build = cache_build_rate(root, image_size, max(workers), cache_dir)  # the check's record is kept there too
    sources = {"files": {"cache_dir": str(cache_dir)}, "cache": {"decoded_cache": True, "cache_dir": str(cache_dir)}}
    rates: dict[str, dict[int, list[float]]] = {source: {n: [] for n in workers} for source in sources}
    for _ in range(rounds):
        for n in workers:
            for source, options in sources.items():
                rates[source][n].append(loader_rate(root, image_size, n, batch_size, device, **options))
    medians = {source: {n: statistics.median(values) for n, values in by.items()} for source, by in rates.items()}
    return {**medians, "build": {max(workers): build}}


def train_rate(image_size: int, batch_size: int, steps: int, channels_last: bool = False) -> float:
    """ResNet-18 SGD training steps/s on random batches (two warm-up steps not timed)."""
    model = resnet18((3, image_size, image_size), 182, channels_last=channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, 182, (batch_size,))
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an image folder root/<folder>/<image> (default: generate one)")
    parser.add_argument("--images", type=int, default=2000, help="images to generate when --root is not given")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"),
                        help="the generated images' width and height")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers, each measured")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="alternated passes per worker count and source")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[224, 64], help="network input sides measured")
    parser.add_argument("--train-steps", type=int, default=5, help="timed ResNet-18 steps at 224 (x8 at 64)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--json", type=Path, help="also write the loader's figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch) / "images"
        if args.root is None:
            generate(root, args.images, size=tuple(args.size))
        print(f"torch {torch.__version__}, workers {args.workers}, batch {args.batch_size}, images under {root}, "
              f"load average {os.getloadavg()[0]:.1f}")
        for size in args.image_sizes if "loader" in args.parts else ():
            rates = loader_rates(root, size, args.workers, args.batch_size, args.rounds, Path(scratch) / f"c{size}")
            figures[size] = rates
            for source in ("files", "cache"):
                cells = ", ".join(f"{n} workers {rate:.0f} img/s" + (f" ({rate / n:.0f} a worker)" if n else "")
                                  for n, rate in rates[source].items())
                print(f"loader {size}px from the {source}: {cells}")
            ((workers, build),) = rates["build"].items()
            print(f"decoded cache {size}px built at {build:.0f} img/s ({workers} workers, the check included)")
        for size, steps in ((224, args.train_steps), (64, 8 * args.train_steps)) if "train" in args.parts else ():
            for channels_last in (False, True):
                rate = train_rate(size, args.batch_size, steps, channels_last)
                print(f"resnet18 train {size}px batch {args.batch_size} channels_last={channels_last}: "
                      f"{rate:.2f} steps/s ({rate * args.batch_size:.0f} img/s), load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
