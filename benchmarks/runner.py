#!/usr/bin/env python
"""What does cl_bench cost beyond the arithmetic it must do? The runner against a bare PyTorch loop.

Workload W: permuted MNIST, 5 tasks (the first the identity), MLP 784-400-400-10, one shared 10-way
head (domain-IL), SGD lr 0.01 momentum 0.9, batch 128, one epoch per task, evaluation only at task
starts and ends. Cases `baseline`, `ewc` and `kd` run W (each method whose conf/method/*.yaml
exists); `default` is `cl-bench` with no overrides (the embedded digits), compared from data ready
to metrics written.

The bare loop is benchmarks/reference_loop.py: hand-written PyTorch, importing nothing of cl_bench,
that trains and evaluates exactly what the runner does (its docstring says how). Its accuracy matrix
is checked against the runner's (Δacc in the table).

    python benchmarks/runner.py                  # 3 repetitions: 5.5 min where bare W takes ~14 s, 11 where ~25 s
    python benchmarks/runner.py --quick          # 1 repetition, about 2 minutes
    python benchmarks/runner.py --data-dir ~/data --reps 5 --cases baseline,kd

Runner and bare runs alternate (which goes first alternates by repetition), each with `--threads` torch
threads (1 by default: the runner gets `threads=1`); the table gives medians over repetitions. Results:
outputs/bench/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reference_loop import EWC_BATCH, EWC_LAMBDA, EWC_SAMPLES, KD_KAPPA, KD_T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: tests.helpers (generated MNIST)

# cl_bench is imported by the functions that use it: with --timed-runner this file is the runner's own
# process, which must start as `cl-bench` does.

REPO = Path(__file__).resolve().parent.parent
REFERENCE_LOOP = Path(__file__).with_name("reference_loop.py")
W_CASES = ("baseline", "ewc", "kd")
# cl_bench settings of W (reference_loop.py hard-codes the same numbers).
W_OVERRIDES = [
    "dataset=permuted_mnist",
    "model=mlp400",
    "scenario=domain",
    "optimizer=sgd",
    "lr=0.01",
    "first_task.lr=0.01",
    "batch_size=128",
    "steps=null",
    "epochs=1",
    "first_task.steps=null",
    "first_task.epochs=1",
    "eval_every=1000000",
    "first_task.cache=false",
]
# The method settings the bare loop replicates, pinned (defaults may change; λ=1000 diverges on W at lr 0.01).
METHOD_OVERRIDES = {
    "baseline": [],
    "ewc": [
        f"method.lambda={EWC_LAMBDA}",
        f"method.fisher_samples={EWC_SAMPLES}",
        f"method.fisher_batch_size={EWC_BATCH}",
        "method.fisher_label=empirical",
        "method.scope=all",
        "method.mode=separate",
        "method.gamma=1.0",
    ],
    "kd": [f"method.kappa={KD_KAPPA}", f"method.T={KD_T}", "method.t_squared=false", "method.teacher=recorded"],
}


# --------------------------------------------------------------------------- data files


def mnist_missing(data_dir: Path) -> bool:
    """Whether `data_dir/MNIST/raw` lacks any of MNIST's four IDX files (plain or .gz)."""
    from cl_bench.data.sources import missing_mnist_files

    return bool(missing_mnist_files(data_dir / "MNIST" / "raw"))


def generate_mnist(data_dir: Path, n_train: int = 60_000, n_test: int = 10_000) -> None:
    """MNIST-shaped IDX files (28x28 uint8 images, labels 0-9): class prototypes under heavy noise."""
    import numpy as np

    from cl_bench.data.sources import MNIST_FILES
    from tests.helpers.data import write_idx  # (the repository's tests: the benchmarks run from a checkout)

    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
    raw = data_dir / "MNIST" / "raw"
    for (images_file, labels_file), n in ((MNIST_FILES[:2], n_train), (MNIST_FILES[2:], n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        noise = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images = (0.15 * prototypes[labels] + 0.85 * noise).astype(np.uint8)
        write_idx(raw / images_file, images)
        write_idx(raw / labels_file, labels)


# --------------------------------------------------------------------------- the harness


@dataclass
class Measurement:
    """One process: wall time start to exit, its peak RSS, and what it reported."""

    wall_s: float
    cpu_s: float
    maxrss_mb: float
    train_steps: int
    train_seconds: float
    eval_seconds: float
    data_to_metrics_s: float
    accuracy_matrix: list[list[float]]
    best_test: list[float]

    @property
    def steps_per_s(self) -> float:
        return self.train_steps / self.train_seconds

    @property
    def other_s(self) -> float:
        """Wall time outside training steps and evaluation: start-up, data, method set-up, outputs, exit."""
        return self.wall_s - self.train_seconds - self.eval_seconds


def run_child(cmd: list[str], log_path: Path) -> tuple[float, float, float]:
    """Run `cmd` to exit; (wall seconds, CPU seconds, peak RSS in MB) of that process."""
    with log_path.open("w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def runner_command(case: str, data_dir: Path, output_root: Path, stamp: Path, threads: int) -> list[str]:
    if case == "default":
        # no overrides but where outputs go and the threads; a wrapper records when the data is ready
        return [
            sys.executable, __file__, "--timed-runner", str(stamp), f"output_root={output_root}", f"threads={threads}"
        ]
    overrides = [
        f"threads={threads}",
        *W_OVERRIDES,
        f"method={case}",
        *METHOD_OVERRIDES[case],
        f"data_dir={data_dir}",
        f"output_root={output_root}",
    ]
    return [sys.executable, "-m", "cl_bench.cli.app", *overrides]


def measure_runner(case: str, data_dir: Path, work: Path, threads: int) -> Measurement:
    output_root, stamp = work / "runner-out", work / "data_ready_at"
    shutil.rmtree(output_root, ignore_errors=True)
    wall, cpu, rss = run_child(runner_command(case, data_dir, output_root, stamp, threads), work / "runner.log")
    (run_dir,) = [p.parent for p in output_root.glob("runs/*/*/summary.json")]
    summary = json.loads((run_dir / "summary.json").read_text())
    written = max((run_dir / name).stat().st_mtime for name in ("metrics.jsonl", "metrics.csv", "summary.json"))
    since_data = written - float(stamp.read_text()) if stamp.exists() else math.nan
    return Measurement(
        wall,
        cpu,
        rss,
        summary["train_steps"],
        summary["train_steps"] / summary["steps_per_s"],
        summary["eval_seconds"],
        since_data,
        summary["accuracy_matrix"],
        list(summary["score_test_k"].values()),
    )


def measure_bare(case: str, data_dir: Path, work: Path, threads: int) -> Measurement:
    result_path = work / "bare.json"
    cmd = [
        sys.executable, str(REFERENCE_LOOP), case, "--data-dir", str(data_dir), "--result", str(result_path),
        "--threads", str(threads),
    ]
    wall, cpu, rss = run_child(cmd, work / "bare.log")
    r = json.loads(result_path.read_text())
    return Measurement(
        wall,
        cpu,
        rss,
        r["train_steps"],
        r["train_seconds"],
        r["eval_seconds"],
        r["done_at"] - r["data_ready_at"],
        r["accuracy_matrix"],
        r["best_test"],
    )


def timed_runner(stamp: Path, overrides: list[str]) -> None:
    """`cl-bench <overrides>` in this process, writing to `stamp` the time the task data was ready.

    `cl_bench.engine.run` (hence torch) is patched when `cl-bench` itself imports it, not imported here
    first: the app does things before that import (its figure helper starts then)."""
    import importlib.abc
    import importlib.machinery

    def stamp_data_ready(run_module) -> None:
        build = run_module.build_task_sequence

        def stamped(*args):
            tasks = build(*args)
            stamp.write_text(repr(time.time()))
            return tasks

        run_module.build_task_sequence = stamped

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "cl_bench.engine.run":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                stamp_data_ready(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, PatchOnImport())
    sys.argv = ["cl-bench", *overrides]
    from cl_bench.cli.app import main

    main()


def available_cases(requested: list[str]) -> list[str]:
    """Requested cases whose method config exists (always `default`)."""
    from cl_bench.core.layout import CONFIG_DIR

    return [c for c in requested if c == "default" or (CONFIG_DIR / "method" / f"{c}.yaml").exists()]


def flat(values: list) -> list[float]:
    return [v for row in values for v in (row if isinstance(row, list) else [row])]


def max_delta(a: list, b: list) -> float:
    """Largest absolute difference between two equally shaped (nested) lists of accuracies."""
    return max(abs(x - y) for x, y in zip(flat(a), flat(b)))


def summarise(case: str, pairs: list[tuple[Measurement, Measurement]]) -> dict[str, Any]:
    """Medians over repetitions of each figure of the runner, the bare loop and their paired ratios.
    `ratio` is the case's headline: process start to exit on W, data ready to metrics written on
    the embedded default."""
    med = statistics.median

    def both(name: str, value: Callable[[Measurement], float]) -> dict[str, float]:
        return {
            f"runner_{name}": med(value(r) for r, _ in pairs),
            f"bare_{name}": med(value(b) for _, b in pairs),
            f"{name}_ratio": med(value(r) / value(b) for r, b in pairs),
        }

    row: dict[str, Any] = {"case": case, "reps": len(pairs)}
    row.update(both("wall_s", lambda m: m.wall_s))
    row.update(both("cpu_s", lambda m: m.cpu_s))
    row.update(both("steps_per_s", lambda m: m.steps_per_s))
    row.update(both("data_to_metrics_s", lambda m: m.data_to_metrics_s) if case == "default" else {})
    row.update(both("rss_mb", lambda m: m.maxrss_mb))
    row["extra_other_s"] = med(r.other_s - b.other_s for r, b in pairs)
    row["runner_eval_share"] = med(r.eval_seconds / r.wall_s for r, _ in pairs)
    row["bare_eval_share"] = med(b.eval_seconds / b.wall_s for _, b in pairs)
    row["max_abs_acc_delta"] = max(
        max(max_delta(r.accuracy_matrix, b.accuracy_matrix), max_delta(r.best_test, b.best_test)) for r, b in pairs
    )
    headline = "data_to_metrics_s" if case == "default" else "wall_s"
    row["compared"] = "data ready → metrics written" if case == "default" else "process start → exit"
    row["runner_s"], row["bare_s"], row["ratio"] = (
        row[f"runner_{headline}"],
        row[f"bare_{headline}"],
        row[f"{headline}_ratio"],
    )
    return row


COLUMNS = [
    ("case", "case", "{}"),
    ("compared", "compared", "{}"),
    ("runner_s", "runner s", "{:.2f}"),
    ("bare_s", "bare s", "{:.2f}"),
    ("ratio", "time ratio", "{:.3f}"),
    ("cpu_s_ratio", "CPU-time ratio", "{:.3f}"),
    ("steps_per_s_ratio", "steps/s ratio", "{:.3f}"),
    ("extra_other_s", "runner extra s outside train/eval", "{:+.2f}"),
    ("runner_eval_share", "eval share runner", "{:.1%}"),
    ("bare_eval_share", "eval share bare", "{:.1%}"),
    ("runner_rss_mb", "peak RSS runner MB", "{:.0f}"),
    ("bare_rss_mb", "peak RSS bare MB", "{:.0f}"),
    ("rss_mb_ratio", "RSS ratio", "{:.3f}"),
    ("max_abs_acc_delta", "max Δacc", "{:.4f}"),
]


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def describe(data_note: str, reps: int, threads: int) -> str:
    return (
        f"Runner (`python -m cl_bench.cli.app`) against a bare hand-written PyTorch loop, {reps} interleaved "
        f"repetition(s) of {threads} torch thread(s) each side, medians of paired ratios; {data_note}. "
        "Ratios are runner/bare (time, CPU time, RSS: "
        "lower is better; steps/s: higher is better). The bare loop uses the same data files, split, permutations, model initialisation, "
        "batches, steps, loss terms and evaluation points (val of every task at each task's start and end, "
        "test at each task's end, test under the Score's model), so a ratio measures the runner's overhead, "
        "not a different protocol. W cases: process start to exit. default: from data ready to metrics "
        "written (its bare loop takes about a second; no bar applies)."
    )


def measure_pair(
    case: str, data_dir: Path, work: Path, runner_first: bool, threads: int
) -> tuple[Measurement, Measurement]:
    """(runner, bare) measurements of `case`, run one after the other in the given order, each with `threads`."""
    if runner_first:
        runner = measure_runner(case, data_dir, work, threads)
        return runner, measure_bare(case, data_dir, work, threads)
    bare = measure_bare(case, data_dir, work, threads)
    return measure_runner(case, data_dir, work, threads), bare


def harness(args: argparse.Namespace) -> None:
    cases = available_cases(args.cases.split(","))
    work = Path(tempfile.mkdtemp(prefix="cl_bench_bench_"))
    try:
        data_dir = Path(args.data_dir).expanduser()
        if not mnist_missing(data_dir):
            data_note = f"MNIST files from {data_dir}"
        else:
            data_dir = work / "data"
            generate_mnist(data_dir)
            data_note = "generated MNIST-shaped IDX files (60k train / 10k test, uint8)"
        print(
            f"cases: {', '.join(cases)}; {data_note}; {args.reps} repetition(s); {args.threads} thread(s)", flush=True
        )
        pairs: dict[str, list] = {c: [] for c in cases}
        for rep in range(args.reps):
            for case in cases:
                pairs[case].append(measure_pair(case, data_dir, work, rep % 2 == 0, args.threads))
                r, b = pairs[case][-1]
                print(
                    f"rep {rep} {case}: runner {r.wall_s:.2f}s bare {b.wall_s:.2f}s ({r.wall_s / b.wall_s:.3f})",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [summarise(case, pairs[case]) for case in cases]
    report(rows, describe(data_note, args.reps, args.threads), Path(args.out), pairs)


def report(rows: list[dict], header: str, out: Path, pairs: dict) -> None:
    """Print the table and the `ratio` lines; write bench.json and bench.md under `out`."""
    text = markdown(rows, header)
    print("\n" + text)
    for row in rows:
        if row["case"] in W_CASES:
            print(f"ratio {row['case']} {row['ratio']:.3f}")
    for row in rows:
        print(f"rss_ratio {row['case']} {row['rss_mb_ratio']:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    raw = {case: [[asdict(m) for m in pair] for pair in ps] for case, ps in pairs.items()}
    (out / "bench.json").write_text(json.dumps({"description": header, "rows": rows, "raw": raw}, indent=1))
    (out / "bench.md").write_text(text)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per case (default 3)")
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--data-dir", default="~/data", help="a folder holding MNIST/raw/ (else generated)")
    parser.add_argument("--cases", default="baseline,ewc,kd,default", help="comma-separated cases")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of both sides (1 resists other processes' load)"
    )
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench"), help="where bench.json/.md go")
    parser.add_argument("--timed-runner", metavar="STAMP", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.timed_runner:
        timed_runner(Path(args.timed_runner), rest)
    else:
        args.reps = 1 if args.quick else args.reps
        harness(args)


if __name__ == "__main__":
    main()
