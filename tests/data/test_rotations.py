"""Rotated tasks (Mammoth's rot-mnist): every image of a task rotated by its task's angle exactly as Mammoth's
transform rotates it (torchvision's `rotate` of a PIL image), one angle per task drawn uniformly from the range."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from cl_bench.core.errors import ConfigError
from cl_bench.data.rotations import rotated_tasks, rotation_angles, rotation_pixel_map
from cl_bench.data.sequences import build_task_sequence
from cl_bench.data.sources import LabelledImages, mnist
from cl_bench.data.task import TensorSplit


def generated_images(n: int, shape: tuple[int, ...], seed: int) -> LabelledImages:
    """`n` random images of `shape` with values k/255 (as MNIST's), labels 0..9 in turn, for train and test."""
    rng = np.random.default_rng(seed)

    def images() -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 256, (n, *shape))).float() / 255

    labels = torch.arange(n) % 10
    return LabelledImages("generated", images(), labels, images(), labels.clone())


def mammoth_rotated(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Mammoth's rot-mnist transform of one image ([C, H, W] in [0, 1]): a PIL image, torchvision's rotate, back
    to a tensor (ToTensor's /255)."""
    pixels = (x * 255).round().to(torch.uint8)
    image = Image.fromarray(pixels[0].numpy()) if len(x) == 1 else Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return TF.to_tensor(TF.rotate(image, degrees)).view_as(x)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 9, 12), (3, 10, 7)])
@pytest.mark.parametrize("degrees", [0.0, 17.3, 45.0, 90.0, 123.456, 179.9])
def test_every_image_is_rotated_as_mammoths_transform_rotates_it(shape, degrees):
    source = generated_images(20, shape, seed=int(degrees))
    index = torch.arange(20)
    split = TensorSplit(source.train_x, source.train_y, rotation_pixel_map(shape, degrees))
    rotated, labels = split.gather(index)
    for i in index.tolist():
        assert torch.equal(rotated[i], mammoth_rotated(split.x[i], degrees)), (shape, degrees, i)
    assert torch.equal(labels, split.y)
    evaluated = torch.cat([x for x, _ in split.eval_batches(7)])
    assert torch.equal(evaluated, torch.stack([mammoth_rotated(x, degrees) for x in split.x]))


def test_each_task_rotates_train_val_and_test_by_its_own_angle():
    source = generated_images(60, (1, 12, 12), seed=1)
    tasks = rotated_tasks(source, 4, "r", rotation_seed=3, val_fraction=0.2)
    angles = [task.info["degrees"] for task in tasks]
    assert angles == rotation_angles(4, 0.0, 180.0, 3) and len(set(angles)) == 4
    for task, degrees in zip(tasks, angles):
        for split in (task.train, task.val, task.test):
            x, _ = split.gather(torch.arange(len(split)))
            assert torch.equal(x, torch.stack([mammoth_rotated(image, degrees) for image in split.x]))
    assert len(tasks[0].train) + len(tasks[0].val) == 60 and len(tasks[0].test) == 60
    assert all(task.train.x is tasks[0].train.x for task in tasks)  # one copy of the images


def test_the_angles_are_uniform_in_the_range_and_follow_the_seed():
    angles = torch.tensor(rotation_angles(20_000, 0.0, 180.0, 0))
    assert 0 <= angles.min() and angles.max() < 180
    assert abs(angles.mean() - 90) < 1.5 and abs(angles.std() - 180 / 12**0.5) < 1.5  # uniform: mean 90, sd 52
    counts = torch.histc(angles, bins=6, min=0, max=180)
    assert (counts - 20_000 / 6).abs().max() < 300
    assert rotation_angles(3, 0.0, 180.0, 0) == rotation_angles(3, 0.0, 180.0, 0)
    assert rotation_angles(3, 0.0, 180.0, 0) != rotation_angles(3, 0.0, 180.0, 1)
    assert all(30 <= a < 60 for a in rotation_angles(100, 30.0, 60.0, 5))


def test_rotated_mnist_config_builds_twenty_tasks_whose_angles_follow_the_seed(make_config, mnist_dir):
    cfg = make_config("dataset=[rotated_mnist]", "seed=4")
    tasks = build_task_sequence(cfg.dataset)
    assert [task.name for task in tasks] == [f"rotated_mnist.{i}" for i in range(20)]
    assert [task.info["degrees"] for task in tasks] == rotation_angles(20, 0.0, 180.0, 4)
    source = mnist(str(mnist_dir))
    x, _ = tasks[7].test.gather(torch.arange(3))
    degrees = tasks[7].info["degrees"]
    assert torch.equal(x, torch.stack([mammoth_rotated(image, degrees) for image in source.test_x[:3]]))


@pytest.mark.parametrize(("settings", "message"), [
    ({"n_tasks": 0}, "dataset.r.n_tasks=0: must be a positive integer"),
    ({"n_tasks": 2, "min_degrees": 90.0, "max_degrees": 10.0},
     "dataset.r.min_degrees=90.0, max_degrees=10.0: the angles are drawn from [min_degrees, max_degrees); "
     "give min_degrees ≤ max_degrees"),
])
def test_bad_settings_are_refused_with_one_line(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        rotated_tasks(generated_images(10, (1, 5, 5), seed=0), name="r", **settings)
