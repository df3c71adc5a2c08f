"""Whole runs through run_experiment: the run folder, reproducibility, failures, MNIST."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from cl_bench.core.errors import ConfigError
from cl_bench.core.score import peak_score
from cl_bench.data.sequences import build_task_sequence
from cl_bench.engine.first_task_cache import first_task_key
from cl_bench.engine.validate import validate_config
from tests.helpers.config import TINY
from tests.helpers.runs import tiny_run


def test_run_folder_holds_metrics_summary_figure_checkpoints(tmp_path):
    summary, run_dir = tiny_run(tmp_path)
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


def test_summary_score_is_the_one_its_metrics_imply(tmp_path):
    summary, run_dir = tiny_run(tmp_path)
    metrics = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    columns = [c for c in metrics.columns if c.startswith("val/")]
    window = int(((metrics["task"] == 1) & (metrics["task_step"] > 0)).idxmax())  # B from its first update on
    score = peak_score(metrics[columns].values.tolist(), window, metrics["step"].tolist())
    assert summary["score"] == pytest.approx(score.score)
    assert [summary["score_k"]["A"], summary["score_k"]["B"]] == pytest.approx(score.per_task)
    assert summary["score_step"] == score.step
    last = metrics[metrics["task"] == 1].iloc[-1]
    assert summary["val_accuracy_matrix"][1] == pytest.approx([last[c] for c in columns])
    assert summary["bwt"] == pytest.approx(summary["accuracy_matrix"][1][0] - summary["accuracy_matrix"][0][0])
    assert summary["steps_per_s"] > 0 and summary["train_steps"] == 60


def test_same_seed_same_metrics(tmp_path):
    _, first = tiny_run(tmp_path, "model=mlp", "model.dropout=0.2", name="a")
    _, second = tiny_run(tmp_path, "model=mlp", "model.dropout=0.2", name="b")
    _, other = tiny_run(tmp_path, "model=mlp", "model.dropout=0.2", "seed=1", name="c")
    read = lambda d: (d / "metrics.jsonl").read_text()  # noqa: E731
    assert read(first) == read(second)
    assert read(first) != read(other)


def test_a_failing_job_writes_a_failed_summary_and_returns(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "dataset=[split_mnist]")
    assert summary["status"] == "failed"
    assert "FileNotFoundError" in summary["error"] and "train-images-idx3-ubyte" in summary["error"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert "Traceback" in (run_dir / "error.txt").read_text()


def test_split_mnist_from_idx_files(tmp_path, mnist_dir):
    summary, _ = tiny_run(tmp_path, "dataset=[split_mnist]", f"data_dir={mnist_dir}")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["tasks"] == ["split_mnist.0", "split_mnist.1"]
    assert summary["val_accuracy_matrix"][0][0] > 0.9  # the bars are easy to learn


def test_class_il_grows_the_head_and_future_tasks_are_not_evaluated(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "scenario=class")
    metrics = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    assert metrics.loc[metrics.task == 0, "val/split_sklearn_digits.1"].isna().all()
    assert not metrics.loc[metrics.task == 1, "val/split_sklearn_digits.1"].isna().any()
    head = torch.load(run_dir / "checkpoints" / "ckpt-000000060-002.pt", weights_only=True)["model"]["head.weight"]
    assert head.shape[0] == 10
    assert math.isnan(summary["val_accuracy_matrix"][0][1])


def test_class_il_measures_the_task_aware_accuracy_too_and_scores_the_one_named(make_config, tmp_path):
    """Class-IL logs both accuracies; the task-aware one is the argmax within the task's own units
    (checked against the checkpointed model), never below the class-IL one, and `accuracy=` picks
    the one the Score, the test Score and the accuracy matrix follow."""
    runs = {kind: tiny_run(tmp_path, "scenario=class", f"accuracy={kind}", name=kind)
            for kind in ("scenario", "task_aware")}
    metrics = pd.read_json(runs["scenario"][1] / "metrics.jsonl", lines=True)
    a = "split_sklearn_digits.0"
    assert (metrics[f"val_task_aware/{a}"] >= metrics[f"val/{a}"]).all()
    end = metrics.iloc[-1]
    assert end[f"val_task_aware/{a}"] > end[f"val/{a}"]  # task B's units take A's examples in class-IL
    state = torch.load(runs["scenario"][1] / "checkpoints" / "ckpt-000000060-002.pt", weights_only=True)["model"]
    cfg = make_config(TINY, "scenario=class")
    task_a = build_task_sequence(cfg.dataset)[0]
    model = instantiate(cfg.model, input_shape=task_a.input_shape, n_outputs=10)
    model.load_state_dict(state)
    model.eval()
    x, y = next(task_a.val.eval_batches(10_000))
    with torch.no_grad():
        within = model(x)[:, :5].argmax(1)
    assert end[f"val_task_aware/{a}"] == pytest.approx(float((within == y).float().mean()))
    scenario, aware = runs["scenario"][0], runs["task_aware"][0]
    assert (scenario["accuracy"], aware["accuracy"]) == ("scenario", "task_aware")
    assert aware["accuracy_matrix"] == aware["accuracy_matrices"]["task_aware"]["test"]
    assert scenario["accuracy_matrix"] == scenario["accuracy_matrices"]["scenario"]["test"]
    assert aware["score"] == aware["accuracy_matrices"]["task_aware"]["score"] > scenario["score"]
    assert math.isnan(aware["accuracy_matrix"][0][1])
    with pytest.raises(ConfigError, match="accuracy=task_aware: domain-IL"):
        validate_config(make_config("accuracy=task_aware"))


def test_tasks_json_lists_every_tasks_classes_and_split_sizes(tmp_path):
    _, run_dir = tiny_run(tmp_path)
    tasks = json.loads((run_dir / "tasks.json").read_text())
    assert [t["name"] for t in tasks] == ["split_sklearn_digits.0", "split_sklearn_digits.1"]
    assert [t["classes"] for t in tasks] == [["0", "2", "4", "6", "8"], ["1", "3", "5", "7", "9"]]
    assert all(set(t["split_sizes"]) == {"train", "val", "test"} and min(t["split_sizes"].values()) > 0 for t in tasks)
    assert sum(sum(t["split_sizes"].values()) for t in tasks) == 1797  # every embedded digit, once
    assert tasks[0]["input_shape"] == [1, 8, 8]


def test_precision_fp32_is_auto_on_cpu_and_bf16_autocasts(make_config, tmp_path):
    runs = {p: tiny_run(tmp_path, f"precision={p}", name=p) for p in ("auto", "fp32", "bf16")}
    assert all(summary["status"] == "ok" for summary, _ in runs.values())
    read = {p: pd.read_json(run_dir / "metrics.jsonl", lines=True) for p, (_, run_dir) in runs.items()}
    pd.testing.assert_frame_equal(read["auto"], read["fp32"])
    # bf16 changes the losses from task A on: its task-A model is not the cached fp32 one
    first = lambda p: read[p].query("task == 0 and task_step > 0")["loss/task"].to_numpy()  # noqa: E731
    assert not (first("bf16") == first("fp32")).any()
    with pytest.raises(ConfigError, match="precision='fp16': choose one of auto, fp32, bf16"):
        validate_config(make_config("precision=fp16"))
    with pytest.raises(ConfigError, match="model.channels_last='yes'"):
        validate_config(make_config("model=resnet18", "model.channels_last=yes"))


@pytest.mark.parametrize(
    ("other", "shared"),
    [
        (["method=ewc"], True),  # the method: its first task trains as the baseline's
        (["lr=1e-4", "steps=7"], True),  # the later tasks' learning rate and budget
        (["score.window=with_start"], True),  # the Score's window: it lies in the last task
        (["threads=2", "checkpoint.every=5"], True),  # how the run is done, not what it computes
        (["scenario=class", "class_head=full"], False),  # a key that changes task A's head
        (["first_task.lr=1e-4"], False),
        (["seed=1"], False),
        (["+buffer=200"], False),  # a key of the user's own: never shared across its values
    ],
)
def test_the_task_a_cache_key_changes_with_what_trains_task_a_and_nothing_else(make_config, other, shared):
    base = make_config("scenario=class") if "class_head=full" in other else make_config()
    assert (first_task_key(make_config(*other), "cpu", 2) == first_task_key(base, "cpu", 2)) is shared


def test_a_one_task_runs_cache_key_changes_with_the_score_window_and_accuracy(make_config):
    # its only task is the last: the cached state's best point is its Score window's
    base = make_config("scenario=class")
    for other in (make_config("scenario=class", "score.window=with_start"),
                  make_config("scenario=class", "accuracy=task_aware")):
        assert first_task_key(other, "cpu", 1) != first_task_key(base, "cpu", 1)
        assert first_task_key(other, "cpu", 2) == first_task_key(base, "cpu", 2)
