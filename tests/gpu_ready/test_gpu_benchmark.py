"""benchmarks/gpu.py, which scripts/gpu_check.sh runs on a GPU: its smoke run (tiny sizes, on the CPU here) prints the
table with every part, and its recomputation of docs/experiments.md's estimate gives that estimate from the docs'
own assumptions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def gpu_benchmark(monkeypatch):
    """benchmarks/gpu.py as a module (it imports its neighbours as `python benchmarks/gpu.py` does)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu

    return gpu


def test_the_smoke_run_prints_every_part_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--smoke", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in ("training step, ResNet-18 32px, batch 4, Adam:", "evaluation (", "from the files",
                 "from the decoded cache", "a step against the baseline's", "two-cities estimate", "smoke sizes"):
        assert line in done.stdout, line
    figures = json.loads(out.read_text())
    assert figures["smoke"] and figures["device"].startswith("cpu")
    assert [(row["precision"], row["channels_last"]) for row in figures["training"]] == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert all(row["images_per_s"] > 0 for row in figures["training"]) and figures["evaluation"] > 0
    assert set(figures["methods"]) == {"baseline", "ewc", "kd", "replay", "der"}
    assert figures["methods"]["baseline"]["vs_baseline"] == 1
    assert set(figures["loader"]) == {"files", "cache", "build"}
    assert all(rate > 0 for by in figures["loader"].values() for rate in by.values())
    assert figures["estimate"]["six_rows"] > 0


def test_the_estimate_from_the_docs_assumptions_is_the_docs_estimate(gpu_benchmark):
    """docs/experiments.md assumed 3,000 images/s of training, 9,000 of evaluation, 800 decodes/s with 8 workers and
    a loader that keeps up, and no method costing more than the baseline: check ~6 min, cache ~4, task A ~5, a task-B
    run ~2.5, the six rows ~1-1.5 h."""
    minutes = gpu_benchmark.estimate(3000, 9000, 800, 10_000, {"baseline": 1.0, "ewc": 1.0, "kd": 1.0})
    check, cache = 290_000 / 800 / 60, 165_000 / 800 / 60
    task_a = (10_000 * 64 / 3000 + 41 * 15_000 / 9000) / 60
    task_b = (5_000 * 64 / 3000 + 21 * 16_500 / 9000) / 60
    assert minutes == pytest.approx({"check": check, "cache": cache, "task_a": task_a, "task_b_baseline": task_b,
                                     "task_b_ewc": task_b, "task_b_kd": task_b,
                                     "six_rows": check + cache + task_a + 22 * task_b})
    assert (round(check), round(cache), round(task_a), round(task_b, 1)) == (6, 3, 5, 2.4)
    assert 60 <= minutes["six_rows"] <= 90
    # a loader slower than the GPU bounds the steps; a method's step ratio scales its runs' training
    slower = gpu_benchmark.estimate(3000, 9000, 800, 1500, {"baseline": 1.0, "ewc": 1.2, "kd": 1.1})
    assert slower["task_a"] == pytest.approx((10_000 * 64 / 1500 + 41 * 15_000 / 9000) / 60)
    assert slower["task_b_ewc"] == pytest.approx((5_000 * 64 * 1.2 / 1500 + 21 * 16_500 / 9000) / 60)
