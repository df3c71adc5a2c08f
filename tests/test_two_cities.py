"""The two-cities experiment end to end on CPU: `experiment=two_cities` over generated VMMRdb-like and
colour image folders at 32x32, through the real config, runner, task-A cache and decoded cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from cl_bench.data.image_folder import IMAGENET_MEAN, IMAGENET_STD
from cl_bench.data.sequences import build_task_sequence
from cl_bench.engine.first_task_cache import first_task_key
from cl_bench.engine.run import run_experiment
from cl_bench.records.checkpoint import load_checkpoint
from tests.helpers.config import compose_config
from tests.helpers.data import save_coloured_picture

# make_model_year folders (years merged into make_model), a class dropped by top_k=3 (mazda_3), one
# under min_images=4 (kia_rio), a folder the pattern does not match; broken.jpg, gray.png, rgba.png
# are added to the folders below.
VMMR = {"honda_civic_2004": 5, "honda_civic_2005": 4, "honda_civic_2006": 3, "toyota_camry_2010": 6,
        "toyota_camry_2011": 5, "ford_focus_2008": 8, "mazda_3_2009": 5, "kia_rio_2010": 2, "misc_photos": 3}
COLOURS = {"black": (20, 20, 20), "red": (200, 30, 30), "white": (235, 235, 235)}
SMALL = [
    "experiment=two_cities", "dataset.vmmr.top_k=3", "dataset.vmmr.min_images=4",
    "dataset.vmmr.image_size=32", "dataset.car_color.image_size=32", "dataset.vmmr.workers=0",
    "dataset.car_color.workers=0", "first_task.steps=6", "steps=4", "eval_every=2", "batch_size=8",
    "eval_batch_size=32", "threads=1",
]
CACHED = ["dataset.vmmr.decoded_cache=true", "dataset.car_color.decoded_cache=true"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """data_dir/vmmrdb/<make_model_year>/*.jpg and data_dir/car_color/<colour>/*.jpg."""
    root = tmp_path_factory.mktemp("data")
    seed = 0
    for k, (folder, n) in enumerate(VMMR.items()):
        for i in range(n):
            save_coloured_picture(root / "vmmrdb" / folder / f"{i:03d}.jpg", (40 * k % 256, 90, 160), seed := seed + 1)
    (root / "vmmrdb" / "honda_civic_2005" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG after all")
    Image.new("L", (40, 30), 100).save(root / "vmmrdb" / "ford_focus_2008" / "gray.png")
    Image.new("RGBA", (40, 30), (10, 20, 30, 0)).save(root / "vmmrdb" / "ford_focus_2008" / "rgba.png")
    for colour, rgb in COLOURS.items():
        for i in range(8):
            save_coloured_picture(root / "car_color" / colour / f"{i:03d}.jpg", rgb, seed := seed + 1)
    return root


def small_config(data_dir: Path, output_root: Path, *overrides: str) -> DictConfig:
    return compose_config(*SMALL, *overrides, output_root=output_root, data_dir=data_dir)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> dict[str, tuple[DictConfig, dict, Path]]:
    """Three runs sharing one cache_dir: baseline from the files; baseline from the decoded cache, training
    task A itself (`first_task.cache=false`: the decoded cache does not change what a run computes, so its
    task A would otherwise come from the first run's); KD at lr 1e-4 from the decoded cache, which takes the
    decoded images and the first run's task A from the caches."""
    out = tmp_path_factory.mktemp("out")
    done = {}
    cases = (("files", []), ("cached", [*CACHED, "first_task.cache=false"]), ("kd", [*CACHED, "method=kd", "lr=1e-4"]))
    for name, overrides in cases:
        cfg = small_config(data_dir, out, *overrides)
        run_dir = out / name
        summary = run_experiment(cfg, run_dir)
        assert summary["status"] == "ok", summary.get("error")
        done[name] = cfg, summary, run_dir
    return done


def tasks_json(run_dir: Path) -> dict[str, dict]:
    return {task["name"]: task for task in json.loads((run_dir / "tasks.json").read_text())}


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_json(run_dir / "metrics.jsonl", lines=True)


def test_curation_merges_years_keeps_the_largest_and_lists_the_rest(runs):
    _, summary, run_dir = runs["files"]
    vmmr, colour = tasks_json(run_dir)["vmmr"], tasks_json(run_dir)["car_color"]
    assert summary["tasks"] == ["vmmr", "car_color"]
    assert vmmr["classes"] == ["ford_focus", "honda_civic", "toyota_camry"]
    assert vmmr["class_counts"] == {"ford_focus": 10, "honda_civic": 12, "toyota_camry": 11}
    assert vmmr["dropped_classes"] == {"mazda_3": 5, "kia_rio": 2}
    assert vmmr["unmatched_folders"] == ["misc_photos"]
    assert vmmr["skipped"] == 1 and vmmr["skipped_files"][0].endswith("honda_civic_2005/broken.jpg")
    assert vmmr["split_sizes"] == {"train": 27, "val": 3, "test": 3} and vmmr["input_shape"] == [3, 32, 32]
    assert colour["classes"] == ["black", "red", "white"] and colour["split_sizes"]["train"] == 18
    # class-IL: the head grew from 3 vmmr units to 3 + 3 colour units
    final = load_checkpoint(sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1])
    assert final["model"]["head.weight"].shape == (6, 512)


def test_min_images_alone_drops_only_the_small_class(data_dir, tmp_path):
    cfg = small_config(data_dir, tmp_path, "dataset.vmmr.top_k=null")
    vmmr = build_task_sequence(cfg.dataset)[0]
    assert vmmr.class_names == ["ford_focus", "honda_civic", "mazda_3", "toyota_camry"]
    assert vmmr.info["dropped_classes"] == {"kia_rio": 2}


def test_splits_are_stratified_and_deterministic(data_dir, tmp_path, runs):
    cfg = small_config(data_dir, tmp_path)
    first, again = build_task_sequence(cfg.dataset), build_task_sequence(cfg.dataset)
    other = build_task_sequence(small_config(data_dir, tmp_path, "dataset.vmmr.split_seed=1").dataset)
    for part in ("train", "val", "test"):
        assert [getattr(t, part).paths for t in first] == [getattr(t, part).paths for t in again]
        for task in first:  # every class in every split: one val and one test image each
            assert torch.bincount(getattr(task, part).labels).tolist() == [
                {"train": n - 2, "val": 1, "test": 1}[part] for n in task.info["class_counts"].values()
            ]
    assert first[0].val.paths != other[0].val.paths
    assert tasks_json(runs["files"][2])["vmmr"]["split_sizes"] == first[0].info["split_sizes"]


def test_grayscale_and_rgba_images_become_rgb(data_dir, tmp_path):
    vmmr, _ = build_task_sequence(small_config(data_dir, tmp_path).dataset)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    found = {}
    for split in (vmmr.train, vmmr.val, vmmr.test):
        for i, path in enumerate(split.paths):
            if Path(path).name in ("gray.png", "rgba.png"):
                x, _ = split.gather(torch.tensor([i]))
                found[Path(path).name] = ((x[0] * std + mean) * 255).round()
    assert found["gray.png"].shape == (3, 32, 32) and torch.all(found["gray.png"] == 100)
    assert torch.all(found["rgba.png"] == 255)  # transparent pixels on white


def test_decoded_cache_built_once_reused_and_same_accuracies(runs):
    (_, _, files_dir), (_, _, cached_dir), (_, _, kd_dir) = runs["files"], runs["cached"], runs["kd"]
    built = [tasks_json(cached_dir)[t]["decoded_cache"] for t in ("vmmr", "car_color")]
    reused = [tasks_json(kd_dir)[t]["decoded_cache"] for t in ("vmmr", "car_color")]
    assert [c["built"] for c in built] == [True, True] and [c["built"] for c in reused] == [False, False]
    assert [c["path"] for c in built] == [c["path"] for c in reused]
    assert "decoded_cache" not in tasks_json(files_dir)["vmmr"]
    # identical inputs: every accuracy and loss of every evaluation point equal to reading the files
    assert (cached_dir / "metrics.jsonl").read_text() == (files_dir / "metrics.jsonl").read_text()
    assert tasks_json(cached_dir)["vmmr"]["skipped"] == 1


def test_second_run_reuses_task_a(runs):
    (_, files, _), (_, cached, cached_dir), (_, kd, kd_dir) = runs["files"], runs["cached"], runs["kd"]
    assert (files["first_task_cached"], cached["first_task_cached"], kd["first_task_cached"]) == (False, False, True)
    assert (kd["method"], kd["lr"]) == ("KD", 1e-4)
    a_rows = lambda d: metrics(d).query("task == 0").dropna(axis=1, how="all").reset_index(drop=True)  # noqa: E731
    assert len(a_rows(kd_dir)) == 4  # steps 0, 2, 4, 6
    pd.testing.assert_frame_equal(a_rows(kd_dir), a_rows(cached_dir))
    assert kd["train_steps"] == 4  # task B only
    assert metrics(kd_dir).query("task == 1 and task_step > 0")["loss/kd"].notna().all()


def test_head_growth_keeps_task_a_rows(runs):
    cfg, _, run_dir = runs["kd"]
    task_a = load_checkpoint(Path(cfg.cache_dir) / "first_task" / f"{first_task_key(cfg, 'cpu', 2)}.pt")
    assert task_a["global_step"] == 6 and task_a["model"]["head.weight"].shape == (3, 512)
    # KD's teacher is the model at task B's step 0, right after the head grew, cut back to A's rows
    final = load_checkpoint(sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1])
    teacher = final["method"]["teacher"]
    for key in ("head.weight", "head.bias"):
        assert torch.equal(teacher[key], task_a["model"][key]), key
    assert final["model"]["head.weight"].shape == (6, 512)
    assert not torch.equal(final["model"]["head.weight"][:3], task_a["model"]["head.weight"])  # B trained them


def test_corrupt_file_is_an_error_when_configured(data_dir, tmp_path):
    cfg = small_config(data_dir, tmp_path, "dataset.vmmr.on_corrupt=error")
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["status"] == "failed" and "broken.jpg" in summary["error"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_parallel_jobs_train_task_a_once(data_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cl_bench.cli.app", f"data_dir={data_dir}", f"output_root={out}", *SMALL,
               "first_task.steps=12", "eval_every=6"]
    jobs = [subprocess.Popen([*command, f"lr={lr}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for lr in (0.001, 0.0001)]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()
    run_dirs = sorted(p.parent for p in (out / "runs").glob("*/*/summary.json"))
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    assert sorted(s["first_task_cached"] for s in summaries) == [False, True]
    assert len(list((out / "cache" / "first_task").glob("*.pt"))) == 1
    a_rows = [metrics(d).query("task == 0").reset_index(drop=True) for d in run_dirs]
    pd.testing.assert_frame_equal(*a_rows)
