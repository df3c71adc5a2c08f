"""Task builders over a labelled source: class splits (split MNIST) and pixel maps (permuted MNIST; rotated
MNIST's in data/rotations.py), and the run's task sequence from the selected dataset configs. Task and class
orders are as configured (`fixed`) or shuffled by a seed (`random`)."""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from cl_bench.core.errors import ConfigError
from cl_bench.data.sources import LabelledImages, stratified_take
from cl_bench.data.task import Task, TensorSplit

ORDERS = ("fixed", "random")
SPLITS = ("train", "val", "test")


def check_order(key: str, order: str) -> None:
    """`task_order` or a dataset's `class_order` (`key`) is one of ORDERS (validate.py checks the
    config with it before any data is read)."""
    if order not in ORDERS:
        raise ConfigError(f"{key}={order!r}: choose one of {', '.join(ORDERS)}")


def ordering(n: int, order: str, seed: int, key: str) -> list[int]:
    """Positions 0..n-1 as given (`fixed`) or shuffled by `seed` (`random`); `key` names the setting."""
    check_order(key, order)
    if order == "fixed":
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def ordered_splits(splits: list[list[int]], class_order: str, order_seed: int, name: str) -> list[list[int]]:
    """`splits`, or with `class_order=random` the same group sizes refilled with the classes shuffled."""
    classes = [c for group in splits for c in group]
    positions = ordering(len(classes), class_order, order_seed, f"dataset.{name}.class_order")
    shuffled = iter([classes[i] for i in positions])
    return [[next(shuffled) for _ in group] for group in splits]


def _train_val(x: Tensor, y: Tensor, val_fraction: float, split_seed: int) -> tuple[TensorSplit, TensorSplit]:
    val = stratified_take(y, val_fraction, split_seed)
    train = torch.ones(len(y), dtype=torch.bool)
    train[val] = False
    return TensorSplit(x[train], y[train]), TensorSplit(x[val], y[val])


def check_test_labels(source: LabelledImages, name: str) -> None:
    """Every test label of `source` is one of its training labels (`dataset.<name>` its config)."""
    unknown = sorted(set(source.test_y.unique().tolist()) - set(source.classes))
    if unknown:
        raise ValueError(f"dataset.{name}: {source.name}'s test labels {unknown} are not among its training labels "
                         f"{source.classes}: give a source whose test classes are its training classes")


def split_tasks(
    source: LabelledImages,
    splits: list[list[int]],
    name: str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    class_order: str = "fixed",
    order_seed: int = 0,
) -> list[Task]:
    """One task per class list; a task's label of a class is its position in the list
    (even digits then odd: label = digit // 2, as the split-MNIST EWC tutorial). `class_order=random` deals the classes
    to the tasks at random (seeded by `order_seed`), keeping the tasks' sizes."""
    classes = set(source.classes)
    seen: set[int] = set()
    for group in splits:
        unknown = [c for c in group if c not in classes]
        repeated = [c for c in group if c in seen or group.count(c) > 1]
        if unknown or repeated or not group:
            raise ValueError(
                f"dataset.{name}.splits={splits}: each class may appear once and must be one of "
                f"{sorted(classes)} (unknown: {unknown}, repeated: {sorted(set(repeated))})"
            )
        seen.update(group)
    check_test_labels(source, name)
    splits = ordered_splits(splits, class_order, order_seed, name)
    train, val = _train_val(source.train_x, source.train_y, val_fraction, split_seed)
    tasks = []
    for position, group in enumerate(splits):
        relabel = torch.full((max(classes) + 1,), -1, dtype=torch.long)
        relabel[torch.tensor(group)] = torch.arange(len(group))

        def part(x: Tensor, y: Tensor) -> TensorSplit:
            keep = relabel[y] >= 0
            return TensorSplit(x[keep], relabel[y[keep]])

        tasks.append(
            Task(
                name=f"{name}.{position}",
                train=part(train.x, train.y),
                val=part(val.x, val.y),
                test=part(source.test_x, source.test_y),
                class_names=[str(c) for c in group],
                input_shape=tuple(source.train_x.shape[1:]),
            )
        )
    return tasks


def equal_split_tasks(
    source: LabelledImages,
    n_tasks: int,
    name: str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    class_order: str = "fixed",
    order_seed: int = 0,
) -> list[Task]:
    """`split_tasks` over the source's classes in label order, dealt into `n_tasks` consecutive groups of
    equal size (split CIFAR-100: 10 tasks of 10 classes, or 20 of 5)."""
    classes = source.classes
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1 or len(classes) % n_tasks:
        raise ConfigError(
            f"dataset.{name}.n_tasks={n_tasks!r}: must divide the {len(classes)} classes into equal tasks"
        )
    size = len(classes) // n_tasks
    splits = [classes[i * size : (i + 1) * size] for i in range(n_tasks)]
    return split_tasks(source, splits, name, val_fraction, split_seed, class_order, order_seed)


def pixel_permutations(n_tasks: int, n_pixels: int, permutation_seed: int,
                       identity_first: bool = True) -> list[Tensor | None]:
    """Seeded random permutations, one per task; the first task's the identity (None) if `identity_first`."""
    generator = torch.Generator().manual_seed(permutation_seed)
    first = [None] if identity_first else []
    return first + [torch.randperm(n_pixels, generator=generator) for _ in range(n_tasks - len(first))]


def pixel_mapped_tasks(
    source: LabelledImages, pixel_maps: list[Tensor | None], name: str, val_fraction: float, split_seed: int
) -> list[Task]:
    """One task of every class per pixel map (TensorSplit.pixel_map; None: the images as they are), every task
    over one copy of the source's images and one train/val split."""
    check_test_labels(source, name)
    if source.classes != list(range(len(source.classes))):
        raise ValueError(f"dataset.{name}: permuted and rotated tasks train on the source's labels as they are, "
                         f"so they must be 0..n-1; {source.name}'s training labels are {source.classes}: give a "
                         f"source whose training part holds every class")
    train, val = _train_val(source.train_x, source.train_y, val_fraction, split_seed)
    test = TensorSplit(source.test_x, source.test_y)
    return [
        Task(
            name=f"{name}.{position}",
            train=TensorSplit(train.x, train.y, pixel_map),
            val=TensorSplit(val.x, val.y, pixel_map),
            test=TensorSplit(test.x, test.y, pixel_map),
            class_names=[str(c) for c in source.classes],
            input_shape=tuple(source.train_x.shape[1:]),
        )
        for position, pixel_map in enumerate(pixel_maps)
    ]


def permuted_tasks(
    source: LabelledImages,
    n_tasks: int,
    name: str,
    permutation_seed: int = 0,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    identity_first: bool = True,
) -> list[Task]:
    """`n_tasks` tasks of every class, each with its own fixed pixel permutation: the first the identity
    (Sörberg's permuted MNIST) or, with `identity_first=false`, a permutation too (Mammoth's perm-mnist)."""
    if n_tasks < 1:
        raise ValueError(f"dataset.{name}.n_tasks={n_tasks}: must be at least 1")
    n_pixels = math.prod(source.train_x.shape[1:])
    permutations = pixel_permutations(n_tasks, n_pixels, permutation_seed, identity_first)
    return pixel_mapped_tasks(source, permutations, name, val_fraction, split_seed)


def check_splits(task: Task) -> None:
    """`task` has examples in each of its train, val and test splits (the trainer evaluates every one)."""
    sizes = {split: len(getattr(task, split)) for split in SPLITS}
    empty = [split for split, size in sizes.items() if size == 0]
    if empty:
        raise ValueError(f"task {task.name}: no {' and no '.join(empty)} examples (split sizes {sizes}): every "
                         f"task needs examples in each split; check its files and its dataset's split settings "
                         f"(image folders: with min_images=3 and both split fractions > 0 every class has a val "
                         f"and a test image)")


def build_task_sequence(datasets: DictConfig, task_order: str = "fixed", seed: int = 0) -> list[Task]:
    """The tasks of every selected dataset config, in the order they were selected (`fixed`) or
    shuffled by `seed` (`random`)."""
    tasks: list[Task] = []
    for key, node in datasets.items():
        built = instantiate(node, name=key) if "name" not in node else instantiate(node)
        tasks.extend(built)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    for task in tasks:
        check_splits(task)
    return [tasks[i] for i in ordering(len(tasks), task_order, seed, "task_order")]
