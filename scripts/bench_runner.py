#!/usr/bin/env python
"""What does cl_bench cost beyond the arithmetic it must do? The runner against a bare PyTorch loop.

Workload W: permuted MNIST, 5 tasks (the first the identity), MLP 784-400-400-10, one shared 10-way
head (domain-IL), SGD lr 0.01 momentum 0.9, batch 128, one epoch per task, evaluation only at task
starts and ends. Cases `baseline`, `ewc` and `kd` run W (each method whose conf/method/*.yaml
exists); `default` is `cl-bench` with no overrides (the embedded digits), compared from data ready
to metrics written.

The bare loop is this script's `--bare CASE` mode: hand-written PyTorch that reads the same IDX
files, splits, permutes and batches them exactly as cl_bench does (same seeds, so the same model
initialisation, batches and steps), trains with the same loss terms and evaluates the same points:
every task's val split at each task's start and end, every task's test split at each task's end,
and the test split under the model of the Score. Each distinct model state is evaluated once. Its
accuracy matrix is checked against the runner's (Δacc in the table).

    python scripts/bench_runner.py                  # 3 repetitions: 5.5 min where bare W takes ~14 s, 11 where ~25 s
    python scripts/bench_runner.py --quick          # 1 repetition, about 2 minutes
    python scripts/bench_runner.py --data-dir ~/data --reps 5 --cases baseline,kd

Runner and bare runs alternate (which goes first alternates by repetition); the table gives
medians over repetitions. Results: outputs/bench/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
W_CASES = ("baseline", "ewc", "kd")
# cl_bench settings of W (the bare loop hard-codes the same numbers below).
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
N_TASKS, HIDDEN, BATCH, LR, MOMENTUM, EVAL_BATCH, SEED = 5, [400, 400], 128, 0.01, 0.9, 1024, 0
KD_KAPPA, KD_T, KD_RECORD_BATCH = 1.0, 2.0, 1024
EWC_LAMBDA, EWC_SAMPLES, EWC_BATCH = 100.0, 200, 128
# The method settings the bare loop replicates, pinned (defaults may change; λ=1000 diverges on W at lr 0.01).
METHOD_OVERRIDES = {
    "baseline": [],
    "ewc": [
        f"method.lambda={EWC_LAMBDA}",
        f"method.fisher_samples={EWC_SAMPLES}",
        f"method.fisher_batch_size={EWC_BATCH}",
        "method.fisher_label=true",
        "method.scope=all",
        "method.mode=separate",
        "method.gamma=1.0",
    ],
    "kd": [f"method.kappa={KD_KAPPA}", f"method.T={KD_T}", "method.t_squared=false", "method.teacher=recorded"],
}


# --------------------------------------------------------------------------- data files


def has_mnist(data_dir: Path) -> bool:
    """Whether `data_dir/MNIST/raw` holds MNIST's four IDX files (plain or .gz)."""
    raw = data_dir / "MNIST" / "raw"
    names = [name for pair in MNIST_FILES.values() for name in pair]
    return all((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names)


def write_idx(path: Path, array) -> None:
    """`array` (uint8) in MNIST's IDX format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def generate_mnist(data_dir: Path, n_train: int = 60_000, n_test: int = 10_000) -> None:
    """MNIST-shaped IDX files (28x28 uint8 images, labels 0-9): class prototypes under heavy noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
    raw = data_dir / "MNIST" / "raw"
    for part, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        noise = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images = (0.15 * prototypes[labels] + 0.85 * noise).astype(np.uint8)
        write_idx(raw / MNIST_FILES[part][0], images)
        write_idx(raw / MNIST_FILES[part][1], labels)


def read_idx(path: Path) -> Tensor:
    """An IDX file (plain or .gz) as a uint8 tensor."""
    import numpy as np
    import torch

    data = path.read_bytes() if path.exists() else gzip.decompress(Path(f"{path}.gz").read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


# --------------------------------------------------------------------------- the bare loop


@dataclass
class Part:
    """A split as tensors with an optional pixel permutation applied per batch."""

    x: Tensor
    y: Tensor
    perm: Tensor | None = None

    def permuted(self, x: Tensor) -> Tensor:
        return x if self.perm is None else x.flatten(1).index_select(1, self.perm)

    def gather(self, index: Tensor) -> Tensor:
        return self.permuted(self.x.index_select(0, index))

    def chunks(self, size: int):
        for start in range(0, len(self.y), size):
            yield self.permuted(self.x[start : start + size]), self.y[start : start + size]


@dataclass
class BareTask:
    train: Part
    val: Part
    test: Part


@dataclass
class Plan:
    """What the bare loop trains: per-task learning rates and steps, and the method."""

    hidden: list[int]
    n_outputs: int
    optimizer: str
    lrs: list[float]
    steps: list[int]
    batch_size: int
    eval_every: int
    method: str = "baseline"


def stratified_take(y: Tensor, fraction: float, seed: int) -> Tensor:
    """cl_bench's seeded stratified split, replicated."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    taken = []
    for label in torch.unique(y).tolist():
        members = (y == label).nonzero().squeeze(1)
        count = max(1, round(fraction * len(members)))
        taken.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(taken).sort().values


def train_val(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, ...]:
    import torch

    val = stratified_take(y, fraction, seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return x[keep], y[keep], x[val], y[val]


def mnist_tasks(data_dir: Path) -> list[BareTask]:
    """W's five permuted-MNIST tasks (val 10% stratified, seed 0; permutations seed 0)."""
    import torch

    raw = data_dir / "MNIST" / "raw"
    x, y = [read_idx(raw / name) for name in MNIST_FILES["train"]]
    test_x, test_y = [read_idx(raw / name) for name in MNIST_FILES["test"]]
    x, test_x = x.unsqueeze(1).float().div_(255.0), test_x.unsqueeze(1).float().div_(255.0)
    tr_x, tr_y, va_x, va_y = train_val(x, y.long(), 0.1, 0)
    del x
    generator = torch.Generator().manual_seed(0)
    perms = [None] + [torch.randperm(784, generator=generator) for _ in range(N_TASKS - 1)]
    return [BareTask(Part(tr_x, tr_y, p), Part(va_x, va_y, p), Part(test_x, test_y.long(), p)) for p in perms]


def digits_tasks() -> list[BareTask]:
    """The embedded default: sklearn digits, test 20%, val 15%, even digits then odd (label digit // 2)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    trv_x, trv_y, test_x, test_y = train_val(x, y, 0.2, 0)
    tr_x, tr_y, va_x, va_y = train_val(trv_x, trv_y, 0.15, 0)
    tasks = []
    for group in ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9]):
        relabel = torch.full((10,), -1, dtype=torch.long)
        relabel[torch.tensor(group)] = torch.arange(len(group))
        parts = [class_part(px, py, relabel) for px, py in ((tr_x, tr_y), (va_x, va_y), (test_x, test_y))]
        tasks.append(BareTask(*parts))
    return tasks


def class_part(x: Tensor, y: Tensor, relabel: Tensor) -> Part:
    """The examples whose class `relabel` keeps (≥ 0), labelled by it."""
    keep = relabel[y] >= 0
    return Part(x[keep], relabel[y[keep]])


def mlp(n_inputs: int, hidden: list[int], n_outputs: int) -> nn.Module:
    """cl_bench's MLP layer for layer (same initialisation order): features, then head."""
    from torch import nn

    layers: list = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(n_inputs, size), nn.ReLU()]
        n_inputs = size
    return nn.Sequential(nn.Sequential(*layers), nn.Linear(n_inputs, n_outputs))


def index_batches(n: int, batch_size: int, steps: int, generator) -> list:
    """cl_bench's sampler: epochs of seeded permutations, the last incomplete batch dropped."""
    import torch

    batches: list = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        batches += [order[s : s + batch_size] for s in range(0, n - batch_size + 1, batch_size)]
    return batches[:steps]


def accuracies(model: nn.Module, parts: list[Part]) -> list[float]:
    """Accuracy on each part, batches of EVAL_BATCH, eval mode, no autograd."""
    import torch

    model.eval()
    result = []
    with torch.inference_mode():
        for part in parts:
            correct = sum((model(x).argmax(1) == y).sum() for x, y in part.chunks(EVAL_BATCH))
            result.append(float(correct) / len(part.y))
    model.train()
    return result


def record_logits(model: nn.Module, part: Part) -> Tensor:
    """The teacher's logits on every training example, in order (LwF's recorded outputs)."""
    import copy

    import torch

    teacher = copy.deepcopy(model).eval()
    with torch.inference_mode():
        return torch.cat([teacher(x) for x, _ in part.chunks(KD_RECORD_BATCH)])


def kd_loss(logits: Tensor, teacher: Tensor) -> Tensor:
    import torch.nn.functional as F

    target = F.softmax(teacher / KD_T, dim=1)
    return KD_KAPPA * -(target * F.log_softmax(logits / KD_T, dim=1)).sum(1).mean()


def ewc_fisher(model: nn.Module, part: Part, generator) -> dict[str, Tensor]:
    """Empirical diagonal Fisher of the MLP on EWC_SAMPLES examples drawn without replacement:
    the mean per-sample squared gradient of log p(y|x), per Linear layer (g²)ᵀ(a²) from its inputs a
    and output gradients g (one batched backward per EWC_BATCH examples)."""
    import torch
    from torch import nn

    index = torch.randperm(len(part.y), generator=generator)[:EWC_SAMPLES]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    sums = [(torch.zeros_like(m.weight), torch.zeros_like(m.bias)) for m in linears]
    model.eval()
    for chunk in index.split(EWC_BATCH):
        h, inputs, outputs = part.gather(chunk).flatten(1), [], []
        for depth, layer in enumerate(linears):
            inputs.append(h)
            outputs.append(layer(h))
            h = outputs[-1] if depth == len(linears) - 1 else torch.relu(outputs[-1])
        objective = torch.log_softmax(h, 1).gather(1, part.y[chunk][:, None]).sum()
        for (w, b), a, g in zip(sums, inputs, torch.autograd.grad(objective, outputs)):
            w += g.square().T @ a.detach().square()
            b += g.square().sum(0)
    model.train()
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: s / len(index) for m, pair in zip(linears, sums) for p, s in zip((m.weight, m.bias), pair)}


def ewc_penalty(model: nn.Module, anchors: list[tuple[dict, dict]]) -> Tensor:
    """λ·Σ_tasks Σ_i F_i (θ_i − θ*_i)², one term per finished task."""
    params = dict(model.named_parameters())
    return EWC_LAMBDA * sum(
        (fisher[n] * (params[n] - theta[n]).square()).sum() for fisher, theta in anchors for n in fisher
    )


class BareLoop:
    """The hand-written loop: train `tasks` in order as cl_bench would, evaluating each distinct model
    state once (a task's step 0 is the previous task's end: same model, same accuracies)."""

    def __init__(self, tasks: list[BareTask], plan: Plan):
        import torch

        torch.manual_seed(SEED)
        self.tasks, self.plan = tasks, plan
        self.model = mlp(math.prod(tasks[0].train.x.shape[1:]), plan.hidden, plan.n_outputs)
        self.sampler = torch.Generator().manual_seed(SEED)
        self.method_generator = torch.Generator().manual_seed(SEED + 1)
        self.timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "train_steps": 0}
        self.rows: list[dict] = []
        self.test_matrix: list[list[float]] = []
        self.optimizer = None
        self.tested: dict[int, list[float]] = {}  # test accuracies by the global step they were measured at
        self.best: tuple[float, int, dict] = (-math.inf, -1, {})  # mean val, global step, state
        self.anchors: list[tuple[dict, dict]] = []  # EWC: (Fisher, θ*) of each finished task
        self.global_step = 0
        self.last_val = self.evaluate("val")

    def evaluate(self, split: str) -> list[float]:
        started = time.perf_counter()
        result = accuracies(self.model, [getattr(t, split) for t in self.tasks])
        self.timing["eval_seconds"] += time.perf_counter() - started
        return result

    def log(self, k: int, loss: float | None = None) -> None:
        """A metrics row; in the last task, a snapshot of the best model so far."""
        self.rows.append({"step": self.global_step, "task": k, "val": self.last_val, "loss": loss})
        mean = sum(self.last_val) / len(self.last_val)
        if k == len(self.tasks) - 1 and mean > self.best[0]:
            state = (
                {} if self.global_step in self.tested else {n: v.clone() for n, v in self.model.state_dict().items()}
            )
            self.best = (mean, self.global_step, state)

    def train_task(self, k: int) -> None:
        import torch

        task, plan = self.tasks[k], self.plan
        teacher = record_logits(self.model, task.train) if plan.method == "kd" and k > 0 else None
        if self.optimizer is None:  # one optimiser for the whole sequence, as cl-bench's optimizer_state=carry
            params = self.model.parameters()
            self.optimizer = (
                torch.optim.SGD(params, lr=plan.lrs[k], momentum=MOMENTUM)
                if plan.optimizer == "sgd"
                else torch.optim.Adam(params, lr=plan.lrs[k])
            )
        optimizer = self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = plan.lrs[k]
        self.log(k)
        loss_sum, since, started = torch.zeros(()), 0, time.perf_counter()
        for step, index in enumerate(index_batches(len(task.train.y), plan.batch_size, plan.steps[k], self.sampler), 1):
            loss = self.loss(task.train, index, teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            since += 1
            self.global_step += 1
            if step % plan.eval_every == 0 or step == plan.steps[k]:
                self.timing["train_seconds"] += time.perf_counter() - started
                self.timing["train_steps"] += since
                self.last_val = self.evaluate("val")
                self.log(k, float(loss_sum) / since)
                loss_sum, since, started = torch.zeros(()), 0, time.perf_counter()
        self.test_matrix.append(self.evaluate("test"))
        self.tested[self.global_step] = self.test_matrix[-1]
        if plan.method == "ewc":
            fisher = ewc_fisher(self.model, task.train, self.method_generator)
            self.anchors.append((fisher, {n: p.detach().clone() for n, p in self.model.named_parameters()}))

    def loss(self, part: Part, index: Tensor, teacher: Tensor | None) -> Tensor:
        import torch.nn.functional as F

        logits = self.model(part.gather(index))
        loss = F.cross_entropy(logits, part.y.index_select(0, index))
        if teacher is not None:
            loss = loss + kd_loss(logits, teacher[index])
        if self.anchors:
            loss = loss + ewc_penalty(self.model, self.anchors)
        return loss

    def best_test(self) -> list[float]:
        """Test accuracies of the Score's model: measured already if it was a task's end."""
        _, step, state = self.best
        if step in self.tested:
            return self.tested[step]
        self.model.load_state_dict(state)
        return self.evaluate("test")

    def run(self) -> dict:
        for k in range(len(self.tasks)):
            self.train_task(k)
        best_test = self.best_test()
        return {"rows": self.rows, "accuracy_matrix": self.test_matrix, "best_test": best_test, **self.timing}


def bare_main(case: str, data_dir: Path, result_path: Path) -> None:
    """The bare loop of `case`: W for baseline, ewc, kd; the embedded default for `default`.

    It treats Python's garbage collector as `cl-bench` does (cl_bench/app.py): objects alive at the
    start are frozen (exempt from collection), and so is everything at the end, which spares the
    interpreter's final collections (~0.6 s with torch loaded). The comparison stays like for like."""
    import gc

    gc.freeze()
    if case == "default":
        tasks = digits_tasks()
        plan = Plan([128], 5, "adam", [0.001, 0.001], [400, 1000], 64, 25)
    else:
        tasks = mnist_tasks(data_dir)
        steps = math.ceil(len(tasks[0].train.y) / BATCH)
        plan = Plan(HIDDEN, 10, "sgd", [LR] * N_TASKS, [steps] * N_TASKS, BATCH, 10**6, case)
    data_ready_at = time.time()
    result = BareLoop(tasks, plan).run()
    result.update(data_ready_at=data_ready_at, done_at=time.time())
    result_path.write_text(json.dumps(result))
    gc.freeze()


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


def runner_command(case: str, data_dir: Path, output_root: Path, stamp: Path) -> list[str]:
    if case == "default":
        # no overrides but where outputs go; a wrapper records when the data is ready
        return [sys.executable, __file__, "--timed-runner", str(stamp), f"output_root={output_root}"]
    overrides = [
        *W_OVERRIDES,
        f"method={case}",
        *METHOD_OVERRIDES[case],
        f"data_dir={data_dir}",
        f"output_root={output_root}",
    ]
    return [sys.executable, "-m", "cl_bench.cli.app", *overrides]


def measure_runner(case: str, data_dir: Path, work: Path) -> Measurement:
    output_root, stamp = work / "runner-out", work / "data_ready_at"
    shutil.rmtree(output_root, ignore_errors=True)
    wall, cpu, rss = run_child(runner_command(case, data_dir, output_root, stamp), work / "runner.log")
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


def measure_bare(case: str, data_dir: Path, work: Path) -> Measurement:
    result_path = work / "bare.json"
    cmd = [sys.executable, __file__, "--bare", case, "--data-dir", str(data_dir), "--result", str(result_path)]
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
    return [c for c in requested if c == "default" or (REPO / "conf" / "method" / f"{c}.yaml").exists()]


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


def describe(data_note: str, reps: int) -> str:
    return (
        f"Runner (`python -m cl_bench.cli.app`) against a bare hand-written PyTorch loop, {reps} interleaved "
        f"repetition(s), medians of paired ratios; {data_note}. Ratios are runner/bare (time, CPU time, RSS: "
        "lower is better; steps/s: higher is better). The bare loop uses the same data files, split, permutations, model initialisation, "
        "batches, steps, loss terms and evaluation points (val of every task at each task's start and end, "
        "test at each task's end, test under the Score's model), so a ratio measures the runner's overhead, "
        "not a different protocol. W cases: process start to exit. default: from data ready to metrics "
        "written (its bare loop takes about a second; no bar applies)."
    )


def measure_pair(case: str, data_dir: Path, work: Path, runner_first: bool) -> tuple[Measurement, Measurement]:
    """(runner, bare) measurements of `case`, run one after the other in the given order."""
    if runner_first:
        runner = measure_runner(case, data_dir, work)
        return runner, measure_bare(case, data_dir, work)
    bare = measure_bare(case, data_dir, work)
    return measure_runner(case, data_dir, work), bare


def harness(args: argparse.Namespace) -> None:
    cases = available_cases(args.cases.split(","))
    work = Path(tempfile.mkdtemp(prefix="cl_bench_bench_"))
    try:
        data_dir = Path(args.data_dir).expanduser()
        if has_mnist(data_dir):
            data_note = f"MNIST files from {data_dir}"
        else:
            data_dir = work / "data"
            generate_mnist(data_dir)
            data_note = "generated MNIST-shaped IDX files (60k train / 10k test, uint8)"
        print(f"cases: {', '.join(cases)}; {data_note}; {args.reps} repetition(s)", flush=True)
        pairs: dict[str, list] = {c: [] for c in cases}
        for rep in range(args.reps):
            for case in cases:
                pairs[case].append(measure_pair(case, data_dir, work, runner_first=rep % 2 == 0))
                r, b = pairs[case][-1]
                print(
                    f"rep {rep} {case}: runner {r.wall_s:.2f}s bare {b.wall_s:.2f}s ({r.wall_s / b.wall_s:.3f})",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [summarise(case, pairs[case]) for case in cases]
    report(rows, describe(data_note, args.reps), Path(args.out), pairs)


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
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench"), help="where bench.json/.md go")
    parser.add_argument("--bare", metavar="CASE", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--timed-runner", metavar="STAMP", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.timed_runner:
        timed_runner(Path(args.timed_runner), rest)
    elif args.bare:
        bare_main(args.bare, Path(args.data_dir).expanduser(), Path(args.result))
    else:
        args.reps = 1 if args.quick else args.reps
        harness(args)


if __name__ == "__main__":
    main()
