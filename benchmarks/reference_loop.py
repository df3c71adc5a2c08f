#!/usr/bin/env python
"""The bare reference loop of benchmarks/runner.py: hand-written PyTorch that trains and evaluates what
the runner does, so that the ratio of the two measures the runner's overhead.

    python benchmarks/reference_loop.py CASE --data-dir DIR --result FILE    # as runner.py starts it

CASE is `baseline`, `ewc` or `kd` on workload W (permuted MNIST from DIR/MNIST/raw, 5 tasks, MLP
784-400-400-10, one shared head, SGD lr 0.01 momentum 0.9, batch 128, one epoch a task), or `default`
(the embedded digits, as `cl-bench` with no overrides). It reads the same IDX files, splits, permutes
and batches them exactly as cl_bench does (same seeds, so the same model initialisation, batches and
steps), trains with the same loss terms (EWC's penalty as the runner takes it: its gradient in closed form
after backward, no value per step) and evaluates the same points: every task's val split at each
task's start and end, every task's test split at each task's end, and the test split under the model
of the Score, each distinct model state once. FILE gets its timings and accuracies (JSON).

It imports nothing of cl_bench, on purpose: a reference must not pay the package's import and set-up
costs, nor inherit its mistakes (its accuracies are checked against the runner's). So it keeps its own
copies of what it replicates: the IDX reader and MNIST's file names, the seeded stratified split, the
batch sampler, the MLP's layer order. Nothing else is shared by copy with the package or the tests.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

CASES = ("baseline", "ewc", "kd", "default")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Workload W and its methods' settings (runner.py gives cl-bench the same numbers).
N_TASKS, HIDDEN, BATCH, LR, MOMENTUM, EVAL_BATCH, SEED = 5, [400, 400], 128, 0.01, 0.9, 1024, 0
KD_KAPPA, KD_T, KD_RECORD_BATCH = 1.0, 2.0, 1024
EWC_LAMBDA, EWC_SAMPLES, EWC_BATCH = 100.0, 200, 128


def read_idx(path: Path) -> Tensor:
    """An IDX file (plain or .gz) as a uint8 tensor."""
    import numpy as np
    import torch

    data = path.read_bytes() if path.exists() else gzip.decompress(Path(f"{path}.gz").read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


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


def add_ewc_gradient(model: nn.Module, sums: dict[str, tuple[Tensor, Tensor]]) -> None:
    """grad += the gradient of λ·Σ_tasks Σ_i F_i (θ_i − θ*_i)², 2λ·(ΣF·θ − ΣF·θ*), from the sums over the
    finished tasks of F and F·θ* (`sums`, by parameter name): the closed form, as the runner takes it."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            fisher, weighted_anchor = sums[name]
            p.grad.addcmul_(fisher, p, value=2 * EWC_LAMBDA).sub_(weighted_anchor, alpha=2 * EWC_LAMBDA)


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
        self.ewc_totals: dict[str, tuple[Tensor, Tensor]] = {}  # EWC: ΣF and ΣF·θ* over the finished tasks, float64
        self.ewc_sums: dict[str, tuple[Tensor, Tensor]] = {}  # the same in float32, taken at each step
        self.global_step = 0
        self.last_val = self.evaluate("val")

    def evaluate(self, split: str) -> list[float]:
        started = time.perf_counter()
        result = accuracies(self.model, [getattr(t, split) for t in self.tasks])
        self.timing["eval_seconds"] += time.perf_counter() - started
        return result

    def log(self, k: int, loss: float | None = None) -> None:
        """A metrics row (`loss` None: the task's start, before its first update); in the last task from its first
        update on (the Score's window, score.window=training), a snapshot of the best model so far."""
        self.rows.append({"step": self.global_step, "task": k, "val": self.last_val, "loss": loss})
        mean = sum(self.last_val) / len(self.last_val)
        if k == len(self.tasks) - 1 and loss is not None and mean > self.best[0]:
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
            if self.ewc_sums:
                add_ewc_gradient(self.model, self.ewc_sums)
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
            for name, p in self.model.named_parameters():
                f, anchor = fisher[name].double(), p.detach().double()
                old_f, old_b = self.ewc_totals.get(name, (0.0, 0.0))
                self.ewc_totals[name] = (old_f + f, old_b + f * anchor)
            self.ewc_sums = {n: (f.float(), b.float()) for n, (f, b) in self.ewc_totals.items()}

    def loss(self, part: Part, index: Tensor, teacher: Tensor | None) -> Tensor:
        import torch.nn.functional as F

        logits = self.model(part.gather(index))
        loss = F.cross_entropy(logits, part.y.index_select(0, index))
        if teacher is not None:
            loss = loss + kd_loss(logits, teacher[index])
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

    It treats Python's garbage collector as `cl-bench` does (cl_bench/cli/app.py): objects alive at the
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--data-dir", default="~/data", help="a folder holding MNIST/raw/ (the W cases)")
    parser.add_argument("--result", required=True, help="where the JSON result goes")
    parser.add_argument("--threads", type=int, required=True, help="torch threads (the runner's `threads=`)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    bare_main(args.case, Path(args.data_dir).expanduser(), Path(args.result))


if __name__ == "__main__":
    main()
