"""Task construction: labels, splits, permutations, sequence order, MNIST files."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.data.sequences import build_task_sequence, permuted_tasks, split_tasks
from cl_bench.data.sources import mnist, read_idx, sklearn_digits
from cl_bench.engine.validate import validate_config
from tests.helpers.data import make_tree, write_idx
from tests.helpers.runs import tiny_run


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
    assert tasks[0].train.pixel_map is None
    perm = tasks[1].train.pixel_map
    assert not torch.equal(perm, tasks[2].train.pixel_map)
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


def raw_file(data_dir, name: str):
    return data_dir / "MNIST" / "raw" / name


def relabel(data_dir, name: str, change) -> None:
    """The IDX label file `name` rewritten with `change` applied to its labels (a numpy array)."""
    labels = read_idx(raw_file(data_dir, name)).numpy().copy()
    write_idx(raw_file(data_dir, name), change(labels))


@pytest.mark.parametrize("dataset", [["dataset=split_mnist"], ["dataset=permuted_mnist",
                                                                  "dataset.permuted_mnist.n_tasks=2"]])
def test_mnist_label_out_of_range_fails_the_run_before_training_naming_the_file(tmp_path, mnist_dir, dataset):
    """Before the check split_mnist dropped the example silently and permuted_mnist gained a class "200"."""
    relabel(mnist_dir, "train-labels-idx1-ubyte", lambda y: np.where(np.arange(len(y)) == 7, 200, y))
    summary, run_dir = tiny_run(tmp_path, *dataset)
    assert summary["status"] == "failed"
    path = raw_file(mnist_dir, "train-labels-idx1-ubyte")
    assert f"{path}: 1 label(s) outside 0-9, e.g. 200 at position 7: delete it and fetch MNIST again" in (
        summary["error"])
    assert "\n" not in summary["error"]
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "tasks.json").exists()


def idx_bytes(array: np.ndarray, tmp_path) -> bytes:
    write_idx(tmp_path / "scratch", array)
    return (tmp_path / "scratch").read_bytes()


CORRUPTIONS = {  # file -> (its new content from the good bytes, the message expected after the file's name)
    "header": ("train-images-idx3-ubyte", lambda good, tmp: b"\x00\x00\x0d\x03" + good[4:],
               "not an IDX file of unsigned bytes"),
    "cut": ("train-images-idx3-ubyte", lambda good, tmp: good[:-100], "bytes of data where its header's shape"),
    "padded": ("t10k-labels-idx1-ubyte", lambda good, tmp: good + b"\x01", "bytes of data where its header's shape"),
    "cut header": ("t10k-labels-idx1-ubyte", lambda good, tmp: good[:6], "cut within its IDX header"),
    "image shape": ("train-images-idx3-ubyte", lambda good, tmp: idx_bytes(np.zeros((300, 28, 27)), tmp),
                    "images of shape [300, 28, 27], expected [N, 28, 28]"),
    "label shape": ("train-labels-idx1-ubyte", lambda good, tmp: idx_bytes(np.zeros((300, 2)), tmp),
                    "labels of shape [300, 2], expected [N]"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_mnist_file_checked_at_load_naming_it(mnist_dir, tmp_path, corruption):
    name, corrupt, message = CORRUPTIONS[corruption]
    path = raw_file(mnist_dir, name)
    path.write_bytes(corrupt(path.read_bytes(), tmp_path))
    with pytest.raises(ValueError) as error:
        mnist(str(mnist_dir))
    assert str(error.value).startswith(f"{path}:") and message in str(error.value)
    assert str(error.value).endswith("or copy MNIST's original files into the folder)")


def test_mnist_image_and_label_counts_must_match(mnist_dir):
    relabel(mnist_dir, "t10k-labels-idx1-ubyte", lambda y: y[:90])
    with pytest.raises(ValueError, match=re.escape(
        f"{raw_file(mnist_dir, 't10k-images-idx3-ubyte')} holds 100 images but "
        f"{raw_file(mnist_dir, 't10k-labels-idx1-ubyte')} 90 labels: delete both and fetch MNIST again"
    )):
        mnist(str(mnist_dir))


def test_mnist_gzip_files_read_and_a_broken_one_named(mnist_dir):
    plain = mnist(str(mnist_dir))
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = raw_file(mnist_dir, name)
        path.with_name(f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    zipped = mnist(str(mnist_dir))
    assert torch.equal(zipped.train_x, plain.train_x) and torch.equal(zipped.test_y, plain.test_y)
    broken = raw_file(mnist_dir, "t10k-labels-idx1-ubyte.gz")
    broken.write_bytes(broken.read_bytes()[:-30])
    with pytest.raises(ValueError, match=re.escape(f"{broken}: cannot be read (EOFError")):
        mnist(str(mnist_dir))


def test_test_labels_outside_the_training_classes_refused_before_training(mnist_dir):
    """Training labels without a digit 9 (0-8 only) while the test file has nines: permuted tasks would have
    9 output units and meet target 9 at their first test evaluation; split tasks index past their relabelling."""
    relabel(mnist_dir, "train-labels-idx1-ubyte", lambda y: np.minimum(y, 8))
    source = mnist(str(mnist_dir))
    with pytest.raises(ValueError, match=re.escape("dataset.p: mnist's test labels [9] are not among its training "
                                                   "labels [0, 1, 2, 3, 4, 5, 6, 7, 8]")):
        permuted_tasks(source, 2, "p")
    with pytest.raises(ValueError, match=re.escape("dataset.s: mnist's test labels [9]")):
        split_tasks(source, [[0, 1, 2, 3], [4, 5, 6, 7]], "s")


def test_permuted_tasks_need_labels_0_to_n_minus_1(mnist_dir):
    relabel(mnist_dir, "train-labels-idx1-ubyte", lambda y: np.where(y == 3, 4, y))
    relabel(mnist_dir, "t10k-labels-idx1-ubyte", lambda y: np.where(y == 3, 4, y))
    with pytest.raises(ValueError, match=re.escape("dataset.p: permuted and rotated tasks train on the source's "
                                                   "labels as they are, so they must be 0..n-1; mnist's training "
                                                   "labels are [0, 1, 2, 4, 5, 6, 7, 8, 9]")):
        permuted_tasks(mnist(str(mnist_dir)), 2, "p")


def test_a_task_without_val_or_test_examples_refused_before_training(make_config, tmp_path, mnist_dir):
    make_tree(tmp_path / "data" / "car_color", {"red": 2, "white": 2})  # 2 images a class: one test, no val
    cfg = make_config("dataset=[car_color]", "dataset.car_color.image_size=16", "dataset.car_color.workers=0")
    with pytest.raises(ValueError, match=re.escape("task car_color: no val examples (split sizes {'train': 2, "
                                                   "'val': 0, 'test': 2}): every task needs examples in each split")):
        build_task_sequence(cfg.dataset)
    relabel(mnist_dir, "t10k-labels-idx1-ubyte", lambda y: np.where(y < 4, 4, y))  # no 0-3 in the test file
    cfg = make_config("dataset=[split_mnist]", "dataset.split_mnist.splits=[[0,1],[2,3],[4,5]]")
    with pytest.raises(ValueError, match=re.escape("task split_mnist.0: no test examples")):
        build_task_sequence(cfg.dataset)


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
