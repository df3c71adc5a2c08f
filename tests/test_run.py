"""Whole runs through run_experiment: the run folder, reproducibility, failures, MNIST."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from cl_bench.metrics import peak_score
from cl_bench.run import run_experiment
from tests.conftest import FAST


def run(make_config, tmp_path, *overrides, name="run"):
    cfg = make_config(*FAST, *overrides)
    run_dir = tmp_path / name
    run_dir.mkdir()
    return run_experiment(cfg, run_dir), run_dir


def test_run_folder_holds_metrics_summary_figure_checkpoints(make_config, tmp_path):
    summary, run_dir = run(make_config, tmp_path)
    assert summary["status"] == "ok", summary.get("error")
    for name in ("metrics.jsonl", "metrics.csv", "summary.json", "curves.png"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "summary.json").read_text())["score"] == summary["score"]
    metrics = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    # evaluation at each task's step 0, every 10 steps and at its end: 4 rows per task
    assert metrics.groupby("task").size().tolist() == [4, 4]
    assert metrics["step"].tolist() == [0, 10, 20, 30, 30, 40, 50, 60]
    assert {"loss/task", "loss/total"} <= set(metrics.columns)
    checkpoint = torch.load(run_dir / "checkpoints" / "ckpt-000000060-002.pt", weights_only=True)
    assert checkpoint["next_task"] == 2 and "head.weight" in checkpoint["model"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "ckpt-000000030-001.pt", "ckpt-000000060-002.pt"
    ]


def test_summary_score_is_the_one_its_metrics_imply(make_config, tmp_path):
    summary, run_dir = run(make_config, tmp_path)
    metrics = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    columns = [c for c in metrics.columns if c.startswith("val/")]
    window = int((metrics["task"] == 1).idxmax())
    score = peak_score(metrics[columns].values.tolist(), window, metrics["step"].tolist())
    assert summary["score"] == pytest.approx(score.score)
    assert [summary["score_k"]["A"], summary["score_k"]["B"]] == pytest.approx(score.per_task)
    assert summary["score_step"] == score.step
    last = metrics[metrics["task"] == 1].iloc[-1]
    assert summary["val_accuracy_matrix"][1] == pytest.approx([last[c] for c in columns])
    assert summary["bwt"] == pytest.approx(summary["accuracy_matrix"][1][0] - summary["accuracy_matrix"][0][0])
    assert summary["steps_per_s"] > 0 and summary["train_steps"] == 60


def test_same_seed_same_metrics(make_config, tmp_path):
    _, first = run(make_config, tmp_path, "model=mlp", "model.dropout=0.2", name="a")
    _, second = run(make_config, tmp_path, "model=mlp", "model.dropout=0.2", name="b")
    _, other = run(make_config, tmp_path, "model=mlp", "model.dropout=0.2", "seed=1", name="c")
    read = lambda d: (d / "metrics.jsonl").read_text()  # noqa: E731
    assert read(first) == read(second)
    assert read(first) != read(other)


def test_a_failing_job_writes_a_failed_summary_and_returns(make_config, tmp_path):
    summary, run_dir = run(make_config, tmp_path, "dataset=[split_mnist]")
    assert summary["status"] == "failed"
    assert "FileNotFoundError" in summary["error"] and "train-images-idx3-ubyte" in summary["error"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert "Traceback" in (run_dir / "error.txt").read_text()


def test_split_mnist_from_idx_files(make_config, tmp_path, mnist_dir):
    summary, _ = run(make_config, tmp_path, "dataset=[split_mnist]", f"data_dir={mnist_dir}")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["tasks"] == ["split_mnist.0", "split_mnist.1"]
    assert summary["val_accuracy_matrix"][0][0] > 0.9  # the bars are easy to learn


def test_class_il_grows_the_head_and_future_tasks_are_not_evaluated(make_config, tmp_path):
    summary, run_dir = run(make_config, tmp_path, "scenario=class")
    metrics = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    assert metrics.loc[metrics.task == 0, "val/split_sklearn_digits.1"].isna().all()
    assert not metrics.loc[metrics.task == 1, "val/split_sklearn_digits.1"].isna().any()
    head = torch.load(run_dir / "checkpoints" / "ckpt-000000060-002.pt", weights_only=True)["model"]["head.weight"]
    assert head.shape[0] == 10
    assert math.isnan(summary["val_accuracy_matrix"][0][1])
