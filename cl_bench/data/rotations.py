"""Rotated tasks (Mammoth's rot-mnist, Buzzega et al. 2020): each task shows every image rotated by one angle of
its own, drawn uniformly from [min_degrees, max_degrees) when the sequence is built, as Mammoth's `Rotation`
draws one per task. The rotation is PIL's (torchvision's `rotate` of a PIL image, Mammoth's transform): about the
image's centre, counter-clockwise, nearest neighbour, the same size, corners blank (0). A nearest-neighbour
rotation moves whole pixels, so it is a pixel map (TensorSplit.pixel_map) and the tasks share one copy of the
images."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cl_bench.core.errors import ConfigError
from cl_bench.data.sequences import pixel_mapped_tasks
from cl_bench.data.sources import LabelledImages
from cl_bench.data.task import Task


def rotation_pixel_map(shape: tuple[int, ...], degrees: float) -> Tensor:
    """The pixel map of a PIL rotation by `degrees` of images of `shape` ((C,) H, W; every channel alike): each
    flattened pixel's source position, or the number of pixels where the rotated image is blank."""
    *channels, height, width = shape
    plane = height * width
    # PIL rotates an image of source positions + 1 (0: blank) exactly as it rotates the pixels themselves
    positions = Image.fromarray(np.arange(1, plane + 1, dtype=np.int32).reshape(height, width))
    source = torch.from_numpy(np.asarray(positions.rotate(degrees, resample=Image.Resampling.NEAREST)).copy())
    source = source.flatten().long() - 1
    n_pixels = math.prod(shape)
    maps = [torch.where(source >= 0, source + c * plane, n_pixels) for c in range(math.prod(channels))]
    return torch.cat(maps)


def rotation_angles(n_tasks: int, min_degrees: float, max_degrees: float, rotation_seed: int) -> list[float]:
    """One angle per task, uniform in [min_degrees, max_degrees), from a generator seeded by `rotation_seed`."""
    draws = torch.rand(n_tasks, generator=torch.Generator().manual_seed(rotation_seed), dtype=torch.float64)
    return (min_degrees + draws * (max_degrees - min_degrees)).tolist()


def rotated_tasks(
    source: LabelledImages,
    n_tasks: int,
    name: str,
    rotation_seed: int = 0,
    min_degrees: float = 0.0,
    max_degrees: float = 180.0,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> list[Task]:
    """`n_tasks` tasks of every class, each its images rotated by its own angle (rotation_angles); the angles
    are in each task's `info["degrees"]`."""
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ConfigError(f"dataset.{name}.n_tasks={n_tasks!r}: must be a positive integer")
    if not min_degrees <= max_degrees:
        raise ConfigError(f"dataset.{name}.min_degrees={min_degrees}, max_degrees={max_degrees}: the angles are "
                          f"drawn from [min_degrees, max_degrees); give min_degrees ≤ max_degrees")
    angles = rotation_angles(n_tasks, min_degrees, max_degrees, rotation_seed)
    shape = tuple(source.train_x.shape[1:])
    tasks = pixel_mapped_tasks(source, [rotation_pixel_map(shape, a) for a in angles], name, val_fraction, split_seed)
    for task, degrees in zip(tasks, angles):
        task.info["degrees"] = degrees
    return tasks
