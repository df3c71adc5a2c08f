"""The fast paths of issue 6 give what the slower ones gave: the metrics CSV without pandas, the curve
figure from a helper process (and without it), the run's GC freezing, and EWC/KD loss terms written
with fewer ops (bit-identical values and gradients)."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cl_bench.methods.ewc import Quadratic
from cl_bench.methods.kd import distillation_losses
from cl_bench.records.figure_worker import CurveFigure
from cl_bench.records.metrics_log import MetricsLog, read_metrics, write_metrics_csv

ROWS = [
    {"step": 0, "task": 0, "task_step": 0, "val/a": 0.1, "val/b": math.nan},
    {"step": 10, "task": 0, "task_step": 10, "val/a": 0.5, "val/b": math.nan, "loss/task": 1.25, "loss/total": 1.25},
    {"step": 10, "task": 1, "task_step": 0, "val/a": 0.5, "val/b": 0.2},
    {"step": 20, "task": 1, "task_step": 10, "val/a": 0.3, "val/b": 0.7, "loss/task": 0.75, "loss/total": 0.75},
]


def test_metrics_csv_has_the_columns_and_values_of_the_jsonl_frame(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for row in ROWS:
        log.append(row)
    write_metrics_csv(log.rows, tmp_path / "metrics.csv")
    written = pd.read_csv(tmp_path / "metrics.csv")
    expected = read_metrics(tmp_path)
    assert list(written.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "0,0,0,0.1,,,"


@pytest.mark.parametrize("use_helper", [True, False])
def test_curve_figure_is_drawn_with_or_without_the_helper(tmp_path, use_helper):
    figure = CurveFigure(use_helper=use_helper)
    assert (figure.process is not None) == use_helper
    figure.draw(ROWS, tmp_path / "curves.png", "Baseline (lr=0.001)")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.process is None


def test_a_failed_helper_falls_back_to_drawing_in_process(tmp_path):
    figure = CurveFigure()
    figure.process.kill()
    figure.process.wait()
    figure.draw(ROWS, tmp_path / "curves.png", "t")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_an_unused_helper_is_stopped():
    figure = CurveFigure()
    process = figure.process
    figure.close()
    assert process.poll() is not None and figure.process is None


def test_a_single_run_freezes_the_gc_and_still_writes_everything(tmp_path):
    code = (
        "import gc, sys; from cl_bench.cli.app import main; sys.argv = ['cl-bench', *sys.argv[1:]]\n"
        "try:\n    main()\nfinally:\n    print('frozen', gc.get_freeze_count() > 0)\n"
    )
    overrides = ["first_task.steps=5", "steps=5", "eval_every=5", "threads=1", f"output_root={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "frozen True" in done.stdout
    (run_dir,) = [p.parent for p in tmp_path.glob("runs/*/*/summary.json")]
    for name in ("metrics.jsonl", "metrics.csv", "summary.json", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name


def _naive_quadratic(params: dict, fisher: dict, center: dict) -> torch.Tensor:
    total = 0.0
    for name, f in fisher.items():
        p = params[name][tuple(slice(0, n) for n in f.shape)]
        total = total + (f * (p - center[name]).square()).sum()
    return total + 0.0


def test_quadratic_value_and_gradient_are_bit_identical_to_the_naive_sum():
    torch.manual_seed(0)
    params = {"w": torch.randn(5, 4, requires_grad=True), "head.weight": torch.randn(6, 4, requires_grad=True)}
    fisher = {"w": torch.rand(5, 4), "head.weight": torch.rand(3, 4)}  # a head grown after the task
    center = {name: torch.randn(f.shape) for name, f in fisher.items()}
    fast = Quadratic(fisher, center).value(params)
    fast_grads = torch.autograd.grad(fast, list(params.values()))
    slow = _naive_quadratic(params, fisher, center)
    slow_grads = torch.autograd.grad(slow, list(params.values()))
    assert torch.equal(fast, slow)
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, slow_grads))


def test_kd_unweighted_mean_is_bit_identical_to_the_weighted_one():
    torch.manual_seed(0)
    for n in (128, 100, 37):
        student = torch.randn(n, 10, requires_grad=True)
        losses = distillation_losses(student, torch.randn(n, 10), [slice(0, 10)], 2.0)
        weight = torch.ones(n)
        weighted = (losses * weight).sum() / weight.sum().clamp(min=1)
        plain = losses.sum() / len(losses)
        assert torch.equal(weighted, plain)
        (g1,) = torch.autograd.grad(weighted, student, retain_graph=True)
        (g2,) = torch.autograd.grad(plain, student)
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("groups", [[slice(0, 10)], [slice(0, 4)], [slice(0, 3), slice(3, 6), slice(6, 10)]])
def test_kd_losses_equal_the_sliced_formula_bit_for_bit(groups):
    """The unsliced path for a group of every unit gives the sliced formula's values and gradients."""
    torch.manual_seed(0)
    student = torch.randn(32, 10, requires_grad=True)
    teacher = torch.randn(32, 10)
    fast = distillation_losses(student, teacher, groups, 2.0)
    slow = sum(
        -(torch.softmax(teacher[:, g] / 2.0, 1) * torch.log_softmax(student[:, g] / 2.0, 1)).sum(1) for g in groups
    )
    assert torch.equal(fast, slow)
    (fast_grad,) = torch.autograd.grad(fast.sum(), student)
    (slow_grad,) = torch.autograd.grad(slow.sum(), student)
    assert torch.equal(fast_grad, slow_grad)
