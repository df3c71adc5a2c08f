"""Throughput of the image-folder loader (files vs decoded cache) and of ResNet-18 training on this machine.

    python benchmarks/image_loader.py                 # ~2000 generated 256x256 JPEGs in a temp folder
    python benchmarks/image_loader.py --root ~/data/vmmrdb --images 0
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cl_bench.data.image_folder import image_folder_tasks
from cl_bench.models.resnet import resnet18


def generate(root: Path, n_images: int, n_classes: int = 10, side: int = 256) -> None:
    """`n_images` JPEGs (smooth colour ramps plus noise, ~20 KB each) in `n_classes` folders."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, side)
    for i in range(n_images):
        folder = root / f"make{i % n_classes}_model_2004"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.uniform(0, 255, 3)
        image = colour * ramp[:, None, None] + rng.normal(0, 20, (side, side, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def loader_rate(root: Path, image_size: int, workers: int, batch_size: int, **options) -> tuple[float, dict]:
    """Images/s of one pass of training batches over the train split (task construction excluded)."""
    (task,) = image_folder_tasks("bench", str(root), image_size=image_size, workers=workers, **options)
    n = len(task.train) // batch_size * batch_size
    index_batches = list(torch.randperm(len(task.train))[:n].split(batch_size))
    started = time.perf_counter()
    for _ in task.train.batches(index_batches):
        pass
    return n / (time.perf_counter() - started), task.info


def cache_build_rate(root: Path, image_size: int, workers: int, cache_dir: Path) -> float:
    """Images/s of building the decoded cache (listing and the first check of every file included)."""
    started = time.perf_counter()
    (task,) = image_folder_tasks("bench", str(root), image_size=image_size, workers=workers,
                                 decoded_cache=True, cache_dir=str(cache_dir))
    assert task.info["decoded_cache"]["built"]
    return sum(task.info["split_sizes"].values()) / (time.perf_counter() - started)


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
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=5, help="timed ResNet-18 steps at 224 (x8 at 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch) / "images"
        if args.root is None:
            generate(root, args.images)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, workers={args.workers}, "
              f"batch {args.batch_size}, images under {root}, load average {os.getloadavg()[0]:.1f}")
        for size in (224, 64):
            cache_dir = Path(scratch) / f"cache{size}"
            files, info = loader_rate(root, size, args.workers, args.batch_size)
            augmented, _ = loader_rate(root, size, args.workers, args.batch_size, augment=True)
            build = cache_build_rate(root, size, args.workers, cache_dir)
            cached, _ = loader_rate(root, size, args.workers, args.batch_size,
                                    decoded_cache=True, cache_dir=str(cache_dir))
            cached_aug, _ = loader_rate(root, size, args.workers, args.batch_size, augment=True,
                                        decoded_cache=True, cache_dir=str(cache_dir))
            print(f"loader {size}px ({info['split_sizes']['train']} train images): files {files:.0f} img/s, "
                  f"files+augment {augmented:.0f} img/s | cache build {build:.0f} img/s, "
                  f"cached {cached:.0f} img/s, cached+augment {cached_aug:.0f} img/s")
        for size, steps in ((224, args.train_steps), (64, 8 * args.train_steps)):
            for channels_last in (False, True):
                rate = train_rate(size, args.batch_size, steps, channels_last)
                print(f"resnet18 train {size}px batch {args.batch_size} channels_last={channels_last}: "
                      f"{rate:.2f} steps/s ({rate * args.batch_size:.0f} img/s), load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
