"""Split CIFAR-10 / CIFAR-100 read by torchvision's CIFAR10 / CIFAR100 from generated files in their exact
python-pickle layout: the tasks' classes, images and local labels, the validation carve-out, the class order,
normalisation, missing and corrupt files, and a tiny class-IL run with the reduced ResNet-18.

No CIFAR download is possible here, so the files are written by the test. torchvision verifies every file's
md5 against its class attributes (`train_list`, `test_list`, `meta`), so the `cifar_dir` fixture sets those
attributes to the generated files' md5s (pytest's monkeypatch, undone after the test): everything else --
the existence check, torchvision's integrity check and pickle loading, our conversion and splitting -- runs
as on the real files. One test leaves torchvision's real checksums in place and gets the corrupt-file error."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from cl_bench.core.errors import ConfigError
from cl_bench.data.cifar import cifar10, cifar100
from cl_bench.data.sequences import build_task_sequence, equal_split_tasks
from cl_bench.engine.validate import validate_config
from tests.helpers.runs import tiny_run

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)  # conf/dataset/split_cifar10.yaml


def images(labels: np.ndarray, seed: int) -> np.ndarray:
    """CIFAR's row layout [N, 3072] (R, G, B planes of 32x32): noise under a bright bar whose row says the class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        x[i, :, label % 16 * 2, :] = 250
        x[i, label // 16 % 3, 31, :] = 250  # CIFAR-100's classes beyond 16 differ in a channel too
    return x.reshape(len(labels), 3072)


def dump(path: Path, content: dict) -> str:
    """`content` pickled at `path`; its md5, as torchvision's check_integrity computes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, train_per_class: int = 20, test_per_class: int = 5) -> dict:
    """root/cifar-10-batches-py/ as torchvision reads it: data_batch_1..5 and test_batch ({data, labels}) and
    batches.meta ({label_names}), labels 0-9 in turn. Returns the class attributes that name those files and md5s."""
    folder = root / CIFAR10.base_folder
    labels = np.arange(10 * train_per_class) % 10
    data = images(labels, seed=0)
    train_list = []
    for batch, rows in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        content = {"batch_label": f"training batch {batch} of 5", "data": data[rows], "labels": labels[rows].tolist()}
        train_list.append([f"data_batch_{batch}", dump(folder / f"data_batch_{batch}", content)])
    test_labels = np.arange(10 * test_per_class) % 10
    test = {"batch_label": "testing batch 1 of 1", "data": images(test_labels, seed=1), "labels": test_labels.tolist()}
    test_list = [["test_batch", dump(folder / "test_batch", test)]]
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"filename": "batches.meta", "key": "label_names",
            "md5": dump(folder / "batches.meta", {"label_names": names, "num_vis": 3072})}
    return {"train_list": train_list, "test_list": test_list, "meta": meta}


def write_cifar100(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> dict:
    """root/cifar-100-python/ as torchvision reads it: train and test ({data, fine_labels, coarse_labels}) and
    meta ({fine_label_names}), fine labels 0-99 in turn. Returns the class attributes naming the files and md5s."""
    folder = root / CIFAR100.base_folder
    attributes: dict = {}
    for part, per_class, seed in (("train", train_per_class, 2), ("test", test_per_class, 3)):
        labels = np.arange(100 * per_class) % 100
        content = {"data": images(labels, seed), "fine_labels": labels.tolist(),
                   "coarse_labels": (labels // 5).tolist()}
        attributes[f"{part}_list"] = [[part, dump(folder / part, content)]]
    names = {"fine_label_names": [f"class{c}" for c in range(100)],
             "coarse_label_names": [f"super{c}" for c in range(20)]}
    attributes["meta"] = {"filename": "meta", "key": "fine_label_names", "md5": dump(folder / "meta", names)}
    return attributes


def raw(root: Path, name: str) -> np.ndarray:
    """A generated file's images as uint8 [N, 3, 32, 32] and its labels, read back with pickle."""
    content = pickle.loads(Path(root / name).read_bytes())
    return content["data"].reshape(-1, 3, 32, 32), np.array(content.get("labels", content.get("fine_labels")))


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch) -> Path:
    """A data_dir with small generated CIFAR-10 and CIFAR-100, torchvision's checksums set to theirs."""
    root = tmp_path / "data"
    for dataset, attributes in ((CIFAR10, write_cifar10(root)), (CIFAR100, write_cifar100(root))):
        for key, value in attributes.items():
            monkeypatch.setattr(dataset, key, value)
    return root


def generated_cifar10(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generated CIFAR-10 as (train images, train labels, test images, test labels), uint8 images [N, 3, 32, 32]."""
    folder = root / CIFAR10.base_folder
    parts = [raw(folder, f"data_batch_{b}") for b in range(1, 6)]
    train_x, train_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test_x, test_y = raw(folder, "test_batch")
    return tuple(torch.from_numpy(np.asarray(a)) for a in (train_x, train_y, test_x, test_y))


def normalised(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def test_cifar10_images_are_the_files_in_unit_range_without_normalisation(cifar_dir):
    source = cifar10(str(cifar_dir))
    train_x, train_y, test_x, test_y = generated_cifar10(cifar_dir)
    assert source.train_x.shape == (200, 3, 32, 32) and source.test_x.shape == (50, 3, 32, 32)
    assert source.train_x.dtype == torch.float32 and source.train_x.is_contiguous()
    assert torch.equal(source.train_x, train_x.float() / 255) and torch.equal(source.test_x, test_x.float() / 255)
    assert torch.equal(source.train_y, train_y.long()) and torch.equal(source.test_y, test_y.long())
    assert 0.0 <= float(source.train_x.min()) and float(source.train_x.max()) <= 1.0


def test_cifar10_normalised_per_channel_by_the_given_mean_and_std(cifar_dir):
    source = cifar10(str(cifar_dir), mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD))
    train_x, _, test_x, _ = generated_cifar10(cifar_dir)
    assert torch.allclose(source.train_x, normalised(train_x), atol=1e-6)
    assert torch.allclose(source.test_x, normalised(test_x), atol=1e-6)


@pytest.mark.parametrize(
    "mean, std, message",
    [
        ([0.5, 0.5, 0.5], None, "source.std=None"),
        ([0.5, 0.5], [0.2, 0.2, 0.2], "source.mean=[0.5, 0.5]"),
        ([0.5, 0.5, 0.5], [0.2, 0.0, 0.2], "every channel's std must be > 0"),
    ],
)
def test_bad_normalisation_is_refused(cifar_dir, mean, std, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cifar10(str(cifar_dir), mean=mean, std=std)


def test_split_cifar10_config_gives_five_tasks_of_two_classes_with_local_labels(cifar_dir, make_config):
    cfg = make_config("dataset=[split_cifar10]", f"data_dir={cifar_dir}", "scenario=class", "model=reduced_resnet18")
    validate_config(cfg)
    tasks = build_task_sequence(cfg.dataset)
    train_x, train_y, test_x, test_y = generated_cifar10(cifar_dir)
    assert [t.name for t in tasks] == [f"split_cifar10.{t}" for t in range(5)]
    for t, task in enumerate(tasks):
        classes = [2 * t, 2 * t + 1]
        assert task.class_names == [str(c) for c in classes] and task.input_shape == (3, 32, 32)
        in_task = torch.isin(test_y, torch.tensor(classes))
        # the test split is every test image of the task's classes, in file order, labelled class - 2t
        assert torch.allclose(task.test.x, normalised(test_x[in_task]), atol=1e-6)
        assert torch.equal(task.test.y, test_y[in_task].long() - 2 * t)
        # 10% of each class's 20 training images are carved out for validation, disjoint from training
        assert len(task.val) == 4 and len(task.train) == 36
        assert sorted(task.val.y.tolist()) == [0, 0, 1, 1]
        together = torch.cat([task.train.x, task.val.x])
        assert torch.unique(together, dim=0).shape[0] == 40
        expected = normalised(train_x[torch.isin(train_y, torch.tensor(classes))])
        assert torch.allclose(torch.unique(together, dim=0), torch.unique(expected, dim=0), atol=1e-6)
        for split in (task.train, task.val):  # each image carries its own class's local label
            assert torch.equal(split.y, (split.x[:, 0, :, :].amax(dim=2).argmax(dim=1) // 2) - 2 * t)


def class_lists(tasks) -> list[list[str]]:
    return [task.class_names for task in tasks]


def test_random_class_order_follows_the_seed_and_keeps_images_with_their_classes(cifar_dir, make_config):
    def tasks(seed: int):
        cfg = make_config("dataset=[split_cifar10]", f"data_dir={cifar_dir}",
                          "dataset.split_cifar10.class_order=random", f"seed={seed}")
        return build_task_sequence(cfg.dataset)

    orders = {seed: class_lists(tasks(seed)) for seed in (0, 1, 2)}
    assert class_lists(tasks(1)) == orders[1]
    assert len({str(order) for order in orders.values()}) > 1
    assert all(sorted(int(c) for group in order for c in group) == list(range(10)) for order in orders.values())
    assert all([len(group) for group in order] == [2] * 5 for order in orders.values())
    for task in tasks(2):  # the bar's row is 2 * class: a task's local label l is the image of class_names[l]
        digit = torch.tensor([int(c) for c in task.class_names])
        assert torch.equal(task.test.x[:, 0, :, :].amax(dim=2).argmax(dim=1) // 2, digit[task.test.y])


@pytest.mark.parametrize("n_tasks", [10, 20])
def test_split_cifar100_deals_the_classes_in_label_order_into_n_tasks(cifar_dir, make_config, n_tasks):
    cfg = make_config("dataset=[split_cifar100]", f"data_dir={cifar_dir}", f"dataset.split_cifar100.n_tasks={n_tasks}")
    tasks = build_task_sequence(cfg.dataset)
    size = 100 // n_tasks
    _, test_y = raw(cifar_dir / CIFAR100.base_folder, "test")
    assert len(tasks) == n_tasks
    for t, task in enumerate(tasks):
        assert task.class_names == [str(c) for c in range(t * size, (t + 1) * size)]
        in_task = (test_y >= t * size) & (test_y < (t + 1) * size)
        assert torch.equal(task.test.y, torch.from_numpy(test_y[in_task] - t * size).long())
        assert len(task.train) + len(task.val) == 4 * size and len(task.val) == size  # 10% of 4: at least one a class


def test_cifar100_reads_the_fine_labels(cifar_dir):
    source = cifar100(str(cifar_dir), mean=None, std=None)
    _, fine = raw(cifar_dir / CIFAR100.base_folder, "train")
    assert source.classes == list(range(100)) and torch.equal(source.train_y, torch.from_numpy(fine).long())


@pytest.mark.parametrize("n_tasks", [0, 7, True])
def test_n_tasks_must_divide_the_classes(cifar_dir, n_tasks):
    with pytest.raises(ConfigError, match=re.escape(f"dataset.s.n_tasks={n_tasks!r}: must divide the 100 classes")):
        equal_split_tasks(cifar100(str(cifar_dir)), n_tasks, "s")


@pytest.mark.parametrize("reader, dataset", [(cifar10, CIFAR10), (cifar100, CIFAR100)])
def test_missing_files_are_a_one_line_error_naming_the_folder_and_the_download(tmp_path, reader, dataset):
    with pytest.raises(ConfigError) as error:
        reader(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert f"files not found in {tmp_path / dataset.base_folder}" in message
    name = dataset.__name__
    assert f"from torchvision.datasets import {name}; {name}('{tmp_path}', download=True)" in message
    assert "dataset.<name>.source.download=true" in message


def test_one_missing_batch_is_named(cifar_dir):
    (cifar_dir / CIFAR10.base_folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=r"CIFAR10 files not found in .*cifar-10-batches-py: data_batch_3\."):
        cifar10(str(cifar_dir))


def test_files_failing_torchvisions_checksum_are_refused(tmp_path):
    write_cifar10(tmp_path)  # torchvision's own md5s left in place: these files are not the real CIFAR-10
    with pytest.raises(ConfigError, match=r"CIFAR10 files in .*cifar-10-batches-py fail torchvision's checksum"):
        cifar10(str(tmp_path))


def test_a_run_without_the_files_fails_with_the_message(tmp_path):
    summary, _ = tiny_run(tmp_path, "dataset=[split_cifar10]", "model=reduced_resnet18", "scenario=class")
    assert summary["status"] == "failed"
    assert "CIFAR10 files not found in" in summary["error"] and "download=True" in summary["error"]


def test_tiny_class_il_run_on_split_cifar10_with_the_reduced_resnet(cifar_dir, tmp_path):
    summary, run_dir = tiny_run(
        tmp_path, "dataset=[split_cifar10]", "model=reduced_resnet18", "scenario=class", f"data_dir={cifar_dir}",
        "batch_size=8", "first_task.steps=4", "steps=2", "eval_every=2", "eval_batch_size=64",
    )
    assert summary["status"] == "ok", summary.get("error")
    assert summary["tasks"] == [f"split_cifar10.{t}" for t in range(5)]
    matrix = np.array(summary["accuracy_matrix"], dtype=float)
    assert matrix.shape == (5, 5)
    assert np.isnan(matrix[np.triu_indices(5, 1)]).all() and not np.isnan(matrix[np.tril_indices(5)]).any()
    head = torch.load(max((run_dir / "checkpoints").glob("ckpt-*.pt")), weights_only=True)["model"]["head.weight"]
    assert head.shape == (10, 160)  # class-IL: 2 rows a task; 8·nf = 160 features
