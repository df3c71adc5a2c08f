"""The Score's window on runs where task B learns slowly and task A is forgotten at B's first update (domain-IL
permuted digits, B at 10 units' chance at its step 0, Adam at lr 0.05 started afresh on B): over B's training
(`score.window=training`) each method's Score is its own peak; with B's step 0 (`with_start`, the rule before
score.window) every method ties there, on the model none of them made."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cl_bench.core.scenario import Scenario
from cl_bench.data.sequences import build_task_sequence
from cl_bench.engine.evaluation import accuracies
from cl_bench.engine.run import run_experiment
from cl_bench.records.checkpoint import load_checkpoint
from cl_bench.records.figure_worker import CurveFigure
from cl_bench.records.run_folder import saved_config_path
from cl_bench.report.make import read_report_csv, write_report
from tests.helpers.config import TINY, compose_config

SLOW_B = (
    "dataset=[permuted_sklearn_digits]", "dataset.permuted_sklearn_digits.n_tasks=2", "first_task.steps=60",
    "steps=3", "eval_every=1", "lr=0.05", "optimizer_state=fresh", "checkpoint.every=1", "checkpoint.keep=100",
)
METHODS = ("baseline", "kd", "l2")
TECHNIQUES = ("Baseline (lr=0.05)", "KD (lr=0.05)", "L2 (lr=0.05)")  # the report's rows
WINDOWS = ("training", "with_start")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, str], tuple[dict, Path]]:
    """Each method under each window, in one sweep folder sharing one task A: (summary, run folder)."""
    out = tmp_path_factory.mktemp("out")
    done = {}
    for method in METHODS:
        for window in WINDOWS:
            cfg = compose_config(TINY, *SLOW_B, f"method={method}", f"score.window={window}", output_root=out)
            run_dir = out / "sweep" / f"{method}-{window}"
            summary = run_experiment(cfg, run_dir, CurveFigure(use_helper=False))  # matplotlib imported once
            assert summary["status"] == "ok", summary.get("error")
            done[method, window] = summary, run_dir
    return done


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def mean_val(row: dict, summary: dict) -> float:
    return sum(row[f"val/{name}"] for name in summary["tasks"]) / len(summary["tasks"])


def test_with_the_start_every_method_ties_at_b_step_0_and_over_b_training_each_scores_its_own_peak(runs):
    starts = set()
    for method in METHODS:
        (old, old_dir), (new, new_dir) = runs[method, "with_start"], runs[method, "training"]
        rows = rows_of(new_dir)
        assert rows == rows_of(old_dir)  # the window changes what is scored, never what is trained
        b = [row for row in rows if row["task"] == 1]
        assert [row["task_step"] for row in b] == [0, 1, 2, 3]
        start, training = b[0], b[1:]
        assert old["score_window"] == "with_start" and old["score_task_step"] == 0
        assert old["score"] == pytest.approx(mean_val(start, old)) and old["score_step"] == start["step"] == 60
        assert old["score_k"]["B"] == pytest.approx(start[f"val/{old['tasks'][1]}"])
        assert old["score_k"]["B"] < 0.15  # near 10 units' chance
        starts.add((round(old["score"], 12), round(old["score_test"], 12)))
        peak = max(training, key=lambda row: mean_val(row, new))  # the earliest of equal means
        assert new["score_window"] == "training" and new["score"] == pytest.approx(mean_val(peak, new))
        assert (new["score_step"], new["score_task_step"]) == (peak["step"], peak["task_step"])
        assert list(new["score_k"].values()) == pytest.approx([peak[f"val/{name}"] for name in new["tasks"]])
        assert new["score"] < old["score"]  # A fell at B's first update more than B rose in three
    assert len(starts) == 1  # every method's Score, and test Score, is the model at B's step 0
    scores = [runs[method, "training"][0]["score"] for method in METHODS]
    assert len({round(score, 12) for score in scores}) == len(METHODS)  # over B's training they differ


def test_the_test_score_is_the_test_accuracy_of_the_model_at_the_score_point(runs):
    cfg = compose_config(TINY, *SLOW_B)
    tasks = build_task_sequence(cfg.dataset, cfg.task_order, cfg.seed)
    scenario = Scenario(cfg.scenario, [task.n_classes for task in tasks])
    for method in METHODS:
        old, new = runs[method, "with_start"][0], runs[method, "training"][0]
        assert old["score_test"] == pytest.approx(sum(old["accuracy_matrix"][0]) / 2)  # A's end: B's step 0
        run_dir = runs[method, "training"][1]
        state = load_checkpoint(run_dir / "checkpoints" / f"ckpt-{new['score_step']:09d}-001.pt")  # that step's
        model = instantiate(cfg.model, input_shape=tasks[0].input_shape, n_outputs=scenario.n_outputs(1))
        model.load_state_dict(state["model"])
        tested = accuracies(model, tasks, "test", scenario, 1024)["scenario"]
        assert list(new["score_test_k"].values()) == pytest.approx(tested)
        assert new["score_test"] == pytest.approx(sum(tested) / 2)
        assert abs(new["score_test"] - old["score_test"]) > 0.01


def test_the_report_names_the_rows_scored_at_the_shared_start(runs):
    sweep = runs["baseline", "training"][1].parent
    text = write_report([sweep], sweep.parent / "report")
    table = read_report_csv(sweep.parent / "report" / "report.csv").set_index("Technique")
    for method, label in zip(METHODS, TECHNIQUES):
        for window in WINDOWS:
            assert table.score[f"{label} · window={window}"] == pytest.approx(runs[method, window][0]["score"])
    old_rows = ", ".join(f"{label} · window=with_start" for label in TECHNIQUES)
    assert f"(score.window=with_start) in {old_rows}; from its first update on in the others." in text
    assert f"the Score is at the last task's step 0 (the model before any update on it, the same for every " \
           f"method) in {old_rows}.\n" in text
    assert f"the last task's accuracy at the Score's point is at chance (within 2 standard errors of a uniform " \
           f"guess) in {old_rows}.\n" in text


def made_before_score_window(run_dir: Path, copy: Path) -> Path:
    """A copy of `run_dir` as cl_bench wrote it before score.window: a summary without score_window and
    score_task_step, a config without `score`."""
    shutil.copytree(run_dir, copy)
    summary = json.loads((copy / "summary.json").read_text())
    del summary["score_window"], summary["score_task_step"]
    (copy / "summary.json").write_text(json.dumps(summary))
    config = OmegaConf.load(saved_config_path(copy))
    del config["score"]
    OmegaConf.save(config, saved_config_path(copy))
    return copy


def test_a_run_made_before_score_window_is_scored_over_b_training_without_its_test_score(runs, tmp_path):
    old_dir = made_before_score_window(runs["kd", "with_start"][1], tmp_path / "sweep" / "kd")
    text = write_report([tmp_path / "sweep"], tmp_path / "report")
    (row,) = read_report_csv(tmp_path / "report" / "report.csv").itertuples()
    new = runs["kd", "training"][0]
    assert row.Technique == "KD (lr=0.05)" and row.score == pytest.approx(new["score"])  # from its metrics
    assert (row.score_A, row.score_B) == pytest.approx(tuple(new["score_k"].values()))
    assert math.isnan(row.score_test)  # the model at that point was not kept
    assert "Test Score unknown in KD (lr=0.05): made before score.window existed" in text
    assert "Not informative" not in text and "score.window=with_start" not in text
    (old_dir / "metrics.jsonl").unlink()  # cannot be recomputed: shown over the window it was made over
    text = write_report([tmp_path / "sweep"], tmp_path / "report")
    (row,) = read_report_csv(tmp_path / "report" / "report.csv").itertuples()
    assert row.score == pytest.approx(runs["kd", "with_start"][0]["score"])
    assert row.score_test == pytest.approx(runs["kd", "with_start"][0]["score_test"])
    assert "(score.window=with_start) in KD (lr=0.05).\n" in text


def test_a_run_started_before_score_window_is_not_resumed(runs, tmp_path):
    old_dir = made_before_score_window(runs["l2", "with_start"][1], tmp_path / "old")
    summary = run_experiment(compose_config(TINY, f"resume={old_dir}"), tmp_path / "unused")
    assert summary["status"] == "refused"
    assert "started before score.window existed" in summary["error"] and "start a new run" in summary["error"]


def test_a_single_task_taken_as_trained_needs_the_start_in_its_window(tmp_path):
    cfg = compose_config(TINY, "dataset=[permuted_sklearn_digits]", "dataset.permuted_sklearn_digits.n_tasks=1",
                         "first_task.steps=0", output_root=tmp_path)
    summary = run_experiment(cfg, tmp_path / "run", CurveFigure(use_helper=False))
    assert summary["status"] == "failed"
    assert "score.window=training: the only task has no training step" in summary["error"]
    with_start = OmegaConf.merge(cfg, {"score": {"window": "with_start"}})
    summary = run_experiment(with_start, tmp_path / "other", CurveFigure(use_helper=False))
    assert summary["status"] == "ok" and summary["score_task_step"] == 0
