"""Task construction: labels, splits, permutations, sequence order, MNIST files."""

from __future__ import annotations

import re

import pytest
import torch

from cl_bench.data.sequences import build_task_sequence, permuted_tasks, split_tasks
from cl_bench.data.sources import mnist, sklearn_digits
from cl_bench.engine.validate import validate_config
from cl_bench.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return sklearn_digits()


def test_split_even_odd_labels_are_digit_div_two(digits):
    even, odd = split_tasks(digits, [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], "s")
    for task, parity in ((even, 0), (odd, 1)):
        assert task.class_names == [str(d) for d in range(parity, 10, 2)]
        # every test image of digit d lands in its parity's task with label d // 2
        expected = digits.test_y[digits.test_y % 2 == parity] // 2
        assert torch.equal(task.test.y, expected)
    assert len(even.train) + len(odd.train) + len(even.val) + len(odd.val) == len(digits.train_y)


def test_splits_are_deterministic_disjoint_and_stratified(digits):
    first = split_tasks(digits, [[0, 1], [2, 3]], "s", val_fraction=0.2, split_seed=3)
    again = split_tasks(digits, [[0, 1], [2, 3]], "s", val_fraction=0.2, split_seed=3)
    other = split_tasks(digits, [[0, 1], [2, 3]], "s", val_fraction=0.2, split_seed=4)
    assert torch.equal(first[0].val.x, again[0].val.x)
    assert not torch.equal(first[0].val.x, other[0].val.x)
    train_rows = {tuple(r.tolist()) for r in first[0].train.x.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in first[0].val.x.flatten(1))
    for label in (0, 1):  # 20% of each class is in val
        n_val = int((first[0].val.y == label).sum())
        n_all = n_val + int((first[0].train.y == label).sum())
        assert abs(n_val - 0.2 * n_all) <= 1


@pytest.mark.parametrize("splits", [[[0, 2], [2, 3]], [[0, 11]], [[0, 0]]])
def test_split_rejects_repeated_or_unknown_classes(digits, splits):
    with pytest.raises(ValueError, match="each class may appear once"):
        split_tasks(digits, splits, "s")


def test_permutation_applied_to_every_split_and_invertible(digits):
    tasks = permuted_tasks(digits, n_tasks=3, name="p", permutation_seed=7)
    assert tasks[0].train.pixel_permutation is None
    perm = tasks[1].train.pixel_permutation
    assert not torch.equal(perm, tasks[2].train.pixel_permutation)
    index = torch.arange(5)
    plain, y_plain = tasks[0].train.gather(index)
    permuted, y_perm = tasks[1].train.gather(index)
    assert torch.equal(y_plain, y_perm)
    assert torch.equal(permuted.flatten(1), plain.flatten(1)[:, perm])
    inverse = torch.argsort(perm)
    assert torch.equal(permuted.flatten(1)[:, inverse], plain.flatten(1))
    x_eval, _ = next(tasks[1].test.eval_batches(5))
    assert torch.equal(x_eval.flatten(1), digits.test_x[:5].flatten(1)[:, perm])


def test_sequence_order_follows_the_multi_select(make_config):
    cfg = make_config("dataset=[permuted_sklearn_digits,split_sklearn_digits]", "dataset.permuted_sklearn_digits.n_tasks=2")
    names = [t.name for t in build_task_sequence(cfg.dataset)]
    assert names == ["permuted_sklearn_digits.0", "permuted_sklearn_digits.1", "split_sklearn_digits.0", "split_sklearn_digits.1"]
    cfg = make_config("dataset=[split_sklearn_digits,permuted_sklearn_digits]", "dataset.permuted_sklearn_digits.n_tasks=2")
    assert [t.name for t in build_task_sequence(cfg.dataset)][0] == "split_sklearn_digits.0"


def test_mnist_reads_idx_files(mnist_dir):
    source = mnist(str(mnist_dir))
    assert source.train_x.shape == (300, 1, 28, 28) and source.test_x.shape == (100, 1, 28, 28)
    assert 0.0 <= float(source.train_x.min()) and float(source.train_x.max()) <= 1.0
    assert source.train_y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_mnist_missing_files_name_the_files_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        mnist(str(tmp_path))
    assert "train-images-idx3-ubyte" in str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in str(error.value)


def class_lists(tasks) -> list[list[str]]:
    return [task.class_names for task in tasks]


def test_random_class_order_is_seeded_keeps_sizes_and_fixed_is_unchanged(digits):
    splits = [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert class_lists(split_tasks(digits, splits, "s", class_order="fixed", order_seed=3)) == [
        [str(c) for c in group] for group in splits
    ]
    orders = [class_lists(split_tasks(digits, splits, "s", class_order="random", order_seed=s)) for s in range(4)]
    assert orders[1] == class_lists(split_tasks(digits, splits, "s", class_order="random", order_seed=1))
    assert len({str(order) for order in orders}) > 1
    for order in orders:
        assert [len(group) for group in order] == [5, 5]
        assert sorted(int(c) for group in order for c in group) == list(range(10))
    first, _ = split_tasks(digits, splits, "s", class_order="random", order_seed=2)
    digit_of_label = torch.tensor([int(c) for c in first.class_names])
    # a task's label of a class is its position in the (shuffled) group
    assert torch.equal(digits.test_y[torch.isin(digits.test_y, digit_of_label)], digit_of_label[first.test.y])


def test_random_task_order_is_seeded_and_fixed_is_the_selection_order(make_config):
    cfg = make_config("dataset=permuted_sklearn_digits", "dataset.permuted_sklearn_digits.n_tasks=4")
    names = [f"permuted_sklearn_digits.{i}" for i in range(4)]

    def order(task_order: str, seed: int) -> list[str]:
        return [t.name for t in build_task_sequence(cfg.dataset, task_order, seed)]

    assert order("fixed", 5) == names
    assert order("random", 1) == order("random", 1)
    assert len({tuple(order("random", seed)) for seed in range(4)}) > 1
    assert all(sorted(order("random", seed)) == names for seed in range(4))


def test_class_order_follows_the_run_seed(make_config):
    orders = []
    for seed in (0, 1):
        cfg = make_config("dataset.split_sklearn_digits.class_order=random", f"seed={seed}")
        orders.append(class_lists(build_task_sequence(cfg.dataset)))
        splits = [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
        expected = split_tasks(sklearn_digits(), splits, "s", class_order="random", order_seed=seed)
        assert orders[-1] == class_lists(expected)
    assert orders[0] != orders[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("task_order=shuffled", "task_order='shuffled': choose one of fixed, random"),
        ("dataset.split_sklearn_digits.class_order=sorted", "dataset.split_sklearn_digits.class_order='sorted'"),
    ],
)
def test_unknown_orders_are_named_before_training(make_config, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(make_config(override))
