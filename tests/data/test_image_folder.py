"""Image-folder tasks on small generated trees: grouping, curation, splits, modes, corrupt files and the
check of every file (its record, a run through a JPEG that fails to decode), the decoded cache, DataLoader
batches and the dataset configs."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.transforms import v2

from cl_bench.data import image_check
from cl_bench.data.image_check import header_error
from cl_bench.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageSpec, decode_image, image_folder_tasks
from tests.helpers.data import flip_scan_bytes, make_tree, picture, save_coloured_picture
from tests.helpers.runs import COMPARED, tiny_run

VMMR = {"class_pattern": r"(?P<make>[^_]+)_(?P<model>.+)_(?P<year>\d{4})", "class_group": "{make}_{model}"}


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised images back to 0..255 values."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def all_eval(split, batch_size: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*split.eval_batches(batch_size))
    return torch.cat(xs), torch.cat(ys)


def load(root: Path, **kwargs) -> "Task":  # noqa: F821 - the Task of cl_bench.data.task
    kwargs = {"name": "t", "root": str(root), "image_size": 16, "workers": 0, **kwargs}
    (task,) = image_folder_tasks(**kwargs)
    return task


@pytest.fixture
def vmmr_tree(tmp_path) -> Path:
    counts = {"honda_civic_2004": 3, "honda_civic_2005": 2, "honda_accord_2004": 2, "toyota_camry_2010": 4, "misc": 1}
    return make_tree(tmp_path / "vmmr", counts)


def test_folders_grouped_by_pattern_into_make_model_or_make(vmmr_tree):
    task = load(vmmr_tree, **VMMR)
    assert task.class_names == ["honda_accord", "honda_civic", "toyota_camry"]
    assert task.info["class_counts"] == {"honda_accord": 2, "honda_civic": 5, "toyota_camry": 4}
    assert task.info["unmatched_folders"] == ["misc"]
    by_make = load(vmmr_tree, **{**VMMR, "class_group": "{make}"})
    assert by_make.class_names == ["honda", "toyota"]
    assert by_make.info["class_counts"] == {"honda": 7, "toyota": 4}
    identity = load(vmmr_tree)
    assert identity.class_names == sorted(["honda_civic_2004", "honda_civic_2005", "honda_accord_2004",
                                           "toyota_camry_2010", "misc"])
    by_year = load(vmmr_tree, class_pattern=r"[a-z]+_[a-z]+_(\d{4})", class_group="{0}")
    assert by_year.info["class_counts"] == {"2004": 5, "2005": 2, "2010": 4}
    with pytest.raises(ValueError, match="names a group 'trim'"):
        load(vmmr_tree, **{**VMMR, "class_group": "{trim}"})
    assert task.input_shape == (3, 16, 16)


def test_curation_keeps_largest_and_lists_dropped(tmp_path):
    root = make_tree(tmp_path / "c", {"a": 5, "b": 4, "c": 3, "d": 1})
    top = load(root, top_k=2)
    assert top.class_names == ["a", "b"] and top.info["dropped_classes"] == {"c": 3, "d": 1}
    big = load(root, min_images=3)
    assert big.class_names == ["a", "b", "c"] and big.info["dropped_classes"] == {"d": 1}
    both = load(root, top_k=3, min_images=4)
    assert both.class_names == ["a", "b"] and both.info["dropped_classes"] == {"c": 3, "d": 1}
    assert sum(both.info["split_sizes"].values()) == 9
    with pytest.raises(ValueError, match="no class"):
        load(root, min_images=6)


def test_empty_class_folder_dropped_and_counts_below_one_refused(tmp_path):
    """With min_images=0 an empty folder used to become a class without images (an output unit never trained)."""
    root = make_tree(tmp_path / "e", {"a": 3, "b": 3})
    (root / "empty").mkdir()
    task = load(root)
    assert task.class_names == ["a", "b"] and task.info["dropped_classes"] == {"empty": 0}
    for key, value in (("min_images", 0), ("min_images", None), ("top_k", 0), ("top_k", True)):
        with pytest.raises(ValueError, match=re.escape(f"dataset.t.{key}={value!r}: must be a whole number >= 1")):
            load(root, **{key: value})


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    root = make_tree(tmp_path / "s", {"a": 20, "b": 10, "c": 3, "d": 1})
    first = load(root, split={"val": 0.2, "test": 0.1}, split_seed=1)
    again = load(root, split={"val": 0.2, "test": 0.1}, split_seed=1)
    other = load(root, split={"val": 0.2, "test": 0.1}, split_seed=2)
    parts = {k: getattr(first, k).paths for k in ("train", "val", "test")}
    assert parts == {k: getattr(again, k).paths for k in ("train", "val", "test")}
    assert parts["val"] != other.val.paths
    assert sum(map(len, parts.values())) == len(set().union(*map(set, parts.values()))) == 34
    for k in ("train", "val", "test"):  # classes of >= 3 images are in every split; "d" (1 image) trains
        assert set(getattr(first, k).labels.tolist()) >= {0, 1, 2}
    assert (first.val.labels == 0).sum() == 4 and (first.test.labels == 0).sum() == 2
    assert (first.train.labels == 3).sum() == 1


def test_every_mode_becomes_rgb(tmp_path):
    root = tmp_path / "m" / "x"
    root.mkdir(parents=True)
    Image.new("L", (16, 16), 100).save(root / "gray.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(root / "clear.png")  # transparent: white
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(root / "cmyk.jpg")  # no ink: white
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 40, 80, 120] + [0] * 762)
    palette.save(root / "palette.png")
    task = load(tmp_path / "m", split={"val": 0.0, "test": 0.0})
    x, _ = all_eval(task.train)
    values = pixels(x).round()
    assert x.shape == (4, 3, 16, 16)
    by_name = dict(zip([Path(p).name for p in task.train.paths], values))
    assert torch.all(by_name["gray.png"] == 100)
    assert torch.all(by_name["clear.png"] == 255)
    assert torch.all(by_name["cmyk.jpg"] >= 250)
    assert by_name["palette.png"][:, 0, 0].tolist() == [40, 80, 120]


def test_corrupt_files_skipped_and_counted_or_an_error(tmp_path):
    root = make_tree(tmp_path / "k", {"a": 4, "b": 4})
    (root / "a" / "junk.jpg").write_bytes(b"not an image at all")
    good = (root / "b" / "000.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(good[: len(good) // 2])
    task = load(root)
    assert task.info["skipped"] == 2
    assert sorted(Path(p).name for p in task.info["skipped_files"]) == ["cut.png", "junk.jpg"]
    assert sum(task.info["split_sizes"].values()) == 8
    with pytest.raises(OSError, match="junk.jpg"):
        load(root, on_corrupt="error")


def test_truncated_jpeg_caught_by_the_decoded_cache(tmp_path):
    root = make_tree(tmp_path / "j", {"a": 3, "b": 3}, suffix=".jpg")
    picture(99, (64, 64)).save(root / "a" / "full.jpg", quality=95)
    data = (root / "a" / "full.jpg").read_bytes()
    (root / "a" / "full.jpg").write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    task = load(root, decoded_cache=True, cache_dir=str(tmp_path / "cache"))
    assert [Path(p).name for p in task.info["skipped_files"]] == ["full.jpg"]
    assert sum(task.info["split_sizes"].values()) == 6
    assert not any(p.endswith("full.jpg") for s in (task.train, task.val, task.test) for p in s.paths)


def flipped_jpeg(path: Path) -> Path:
    """A JPEG at `path` whose header passes PIL's verify and whose decoding fails (checked here)."""
    save_coloured_picture(path, (200, 30, 30), seed=99)
    flip_scan_bytes(path)
    assert header_error(str(path)) is None
    with pytest.raises(OSError, match="cannot decode"):
        ImageSpec(16, 16, (0.08, 1.0), 0).reader(False)(str(path))
    return path


def test_jpeg_that_fails_to_decode_skipped_at_curation_or_an_error(tmp_path):
    root = make_tree(tmp_path / "f", {"a": 4, "b": 4}, suffix=".jpg")
    flipped = flipped_jpeg(root / "a" / "flipped.jpg")
    task = load(root)
    assert task.info["skipped"] == 1 and task.info["skipped_files"] == [str(flipped)]
    assert task.info["class_counts"] == {"a": 4, "b": 4} and sum(task.info["split_sizes"].values()) == 8
    for split in (task.train, task.val, task.test):  # every file left in the task decodes
        assert len(all_eval(split)[0]) == len(split) and str(flipped) not in split.paths
    with pytest.raises(OSError) as error:
        load(root, on_corrupt="error")
    assert str(error.value).startswith(f"1 unreadable image(s) (on_corrupt=error): {flipped}: OSError: broken data")
    assert str(error.value).endswith("remove or replace them, or set on_corrupt=skip to train without them")


def test_run_with_on_corrupt_skip_trains_through_a_jpeg_that_fails_to_decode(tmp_path):
    """Without the decoded cache the files are read in training: the run used to fail at the file's first decode."""
    for k, colour in enumerate(((20, 20, 20), (200, 30, 30), (235, 235, 235))):
        for i in range(6):
            save_coloured_picture(tmp_path / "data" / "car_color" / f"c{k}" / f"{i:03d}.jpg", colour, seed=10 * k + i)
    flipped = flipped_jpeg(tmp_path / "data" / "car_color" / "c1" / "flipped.jpg")
    small = ("dataset=[car_color]", "dataset.car_color.image_size=16", "dataset.car_color.workers=0", "batch_size=8",
             "first_task.cache=false")
    summary, run_dir = tiny_run(tmp_path, *small)
    assert summary["status"] == "ok", summary.get("error")
    (task,) = json.loads((run_dir / "tasks.json").read_text())
    assert task["skipped_files"] == [str(flipped)] and sum(task["split_sizes"].values()) == 18
    assert len(list((tmp_path / "outputs" / "cache").glob("checked-*.json"))) == 1
    again, again_dir = tiny_run(tmp_path, *small, name="again")  # the check read from the record: the same run
    assert {key: again[key] for key in COMPARED} == {key: summary[key] for key in COMPARED}
    assert (again_dir / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()
    refused, refused_dir = tiny_run(tmp_path, *small, "dataset.car_color.on_corrupt=error", name="refused")
    assert refused["status"] == "failed" and "on_corrupt=error" in refused["error"]
    assert f"{flipped}: OSError: broken data stream" in refused["error"]
    assert not (refused_dir / "metrics.jsonl").exists()


def test_check_recorded_under_cache_dir_so_only_the_first_run_decodes(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "r", {"a": 5, "b": 5}, suffix=".jpg")
    flipped = flipped_jpeg(root / "b" / "flipped.jpg")
    decoded = []
    check = image_check.file_error
    monkeypatch.setattr(image_check, "file_error", lambda path, decode: decoded.append(path) or check(path, decode))
    cache_dir = tmp_path / "cache"
    rng = torch.get_rng_state()
    first = load(root, cache_dir=str(cache_dir))
    (record,) = cache_dir.glob("checked-*.json")
    assert len(decoded) == 11 and first.info["skipped_files"] == [str(flipped)]
    second = load(root, cache_dir=str(cache_dir))
    assert len(decoded) == 11 and second.info == first.info and second.train.paths == first.train.paths
    assert torch.equal(torch.get_rng_state(), rng)  # checking or reading the record leaves the random stream
    assert list(cache_dir.glob("checked-*.json")) == [record]
    record.write_text("{not json")  # a damaged record: the files checked again, the record left as it is
    assert load(root, cache_dir=str(cache_dir)).info == first.info and record.read_text() == "{not json"
    assert len(decoded) == 22
    flip_scan_bytes(root / "a" / "002.jpg")  # a changed file: the folder is checked again
    third = load(root, cache_dir=str(cache_dir))
    assert len(decoded) == 33 and third.info["skipped_files"] == sorted([str(flipped), str(root / "a" / "002.jpg")])
    load(root, cache_dir=str(cache_dir), image_size=12)  # another draft size: another decoding, checked again
    assert len(decoded) == 44 and len(list(cache_dir.glob("checked-*.json"))) == 3


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root/<class folder>/<image>"):
        load(tmp_path / "absent")


def test_decoded_cache_built_once_and_equal_to_files(tmp_path):
    root = make_tree(tmp_path / "d", {"a": 6, "b": 5})
    picture(7, (40, 30)).save(root / "a" / "wide.png")  # resized and centre-cropped
    cache_dir = tmp_path / "cache"
    first = load(root, decoded_cache=True, cache_dir=str(cache_dir))
    cache_file = Path(first.info["decoded_cache"]["path"])
    stamp = cache_file.stat().st_mtime_ns
    second = load(root, decoded_cache=True, cache_dir=str(cache_dir))
    assert first.info["decoded_cache"]["built"] and not second.info["decoded_cache"]["built"]
    assert cache_file.stat().st_mtime_ns == stamp
    files = load(root)
    for part in ("train", "val", "test"):
        assert torch.equal(all_eval(getattr(second, part))[0], all_eval(getattr(files, part))[0])
    index = torch.tensor([3, 0, 5])
    assert torch.equal(second.train.gather(index)[0], files.train.gather(index)[0])
    picture(8).save(root / "b" / "000.png")  # a changed file: a new cache
    assert load(root, decoded_cache=True, cache_dir=str(cache_dir)).info["decoded_cache"]["built"]
    assert load(root, decoded_cache=True, cache_dir=str(cache_dir), image_size=12).info["decoded_cache"]["built"]


def test_parallel_jobs_build_the_cache_once(tmp_path):
    root = make_tree(tmp_path / "p", {"a": 30, "b": 30})
    cache_dir = str(tmp_path / "c")
    with ThreadPoolExecutor(2) as pool:  # separate lock file handles, as in separate processes
        jobs = [pool.submit(load, root, decoded_cache=True, cache_dir=cache_dir) for _ in range(2)]
        built = sorted(job.result().info["decoded_cache"]["built"] for job in jobs)
    assert built == [False, True]


def test_loader_batches_equal_with_and_without_workers(tmp_path):
    root = make_tree(tmp_path / "w", {"a": 8, "b": 8, "c": 8})
    index_batches = [torch.tensor([4, 1, 7]), torch.tensor([0, 2]), torch.tensor([9, 3, 5, 6])]
    serial, parallel = load(root, workers=0), load(root, workers=2)
    for _ in range(2):  # the second pass reuses the persistent workers
        got = list(parallel.train.batches(index_batches))
        for (x0, y0), (x2, y2), index in zip(serial.train.batches(index_batches), got, index_batches):
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
            assert torch.equal(x0, serial.train.gather(index)[0])
            assert torch.equal(y0, serial.train.labels[index])
    x, y = all_eval(parallel.val, batch_size=2)
    assert torch.equal(y, parallel.val.labels) and torch.equal(x, all_eval(serial.val, batch_size=5)[0])


def test_augmentation_only_on_train(tmp_path):
    root = make_tree(tmp_path / "g", {"a": 8, "b": 8})
    for cached in (False, True):
        task = load(root, augment=True, decoded_cache=cached, cache_dir=str(tmp_path / "cache"))
        plain = load(root, decoded_cache=cached, cache_dir=str(tmp_path / "cache"))
        assert not task.train.deterministic and task.val.deterministic and plain.train.deterministic
        index = torch.arange(len(task.train))
        (x, y), = task.train.batches([index])
        assert x.shape == (len(index), 3, 16, 16) and torch.equal(y, plain.train.labels)
        assert not torch.allclose(x, plain.train.gather(index)[0])
        assert torch.equal(all_eval(task.val)[0], all_eval(plain.val)[0])
        assert torch.equal(all_eval(task.train)[0], all_eval(plain.train)[0])


def test_dataset_configs_instantiate(make_config, tmp_path):
    make_tree(tmp_path / "data" / "vmmrdb", {"honda_civic_2004": 3, "honda_civic_2005": 3, "kia_rio_2010": 3})
    make_tree(tmp_path / "data" / "car_color", {"red": 3, "white": 3})
    cfg = make_config("dataset=[vmmr,car_color]", "dataset.vmmr.class_group='{make}'",
                      "dataset.vmmr.image_size=16", "dataset.vmmr.workers=0")
    (vmmr,) = instantiate(cfg.dataset.vmmr, name="vmmr")
    assert vmmr.class_names == ["honda", "kia"] and vmmr.input_shape == (3, 16, 16)
    (color,) = instantiate(cfg.dataset.car_color, name="car_color")
    assert color.class_names == ["red", "white"] and color.input_shape == (3, 224, 224)


@pytest.mark.parametrize(("size", "resize"), [(16, 16), (16, 20), (224, 224), (224, 256)])
def test_the_readers_resize_and_centre_crop_are_torchvisions_pixel_for_pixel(tmp_path, size, resize):
    """The eval reader calls torchvision's functional resize and centre crop instead of a v2.Compose of the two
    transforms (the same pixels, less work per image: docs/performance.md#the-image-loader)."""
    shapes = {"wide.jpg": (640, 480), "tall.jpg": (300, 500), "small.png": (40, 30), "square.jpg": (256, 256)}
    reference = v2.Compose([v2.Resize(resize), v2.CenterCrop(size)])
    for name, shape in shapes.items():
        path = tmp_path / name
        picture(len(name), shape).save(path)
        read = ImageSpec(size, resize, (0.08, 1.0), 0).reader(False)(str(path))
        assert read.shape == (3, size, size) and read.dtype == torch.uint8
        assert torch.equal(read, v2.functional.pil_to_tensor(reference(decode_image(str(path), resize)))), name


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_the_decoded_cache_is_a_memory_mapped_file_not_a_copy_in_memory(tmp_path):
    """A VMMRdb-sized cache (~290,000 images, ~44 GB at 224) need not fit in RAM: the file is mapped, its pages read
    as batches touch them."""
    root = make_tree(tmp_path / "m", {"a": 6, "b": 6})
    cache_dir = tmp_path / "cache"
    load(root, decoded_cache=True, cache_dir=str(cache_dir))
    task = load(root, decoded_cache=True, cache_dir=str(cache_dir))
    assert not task.info["decoded_cache"]["built"]
    path = str(Path(task.info["decoded_cache"]["path"]).resolve())
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(path)]
    assert mapped, f"{path} is not mapped"
    start, end = (int(bound, 16) for bound in mapped[0].split()[0].split("-"))
    assert start <= task.train.cache.data_ptr() < end  # the split's images are the mapping itself
