"""Benchmark of the diagonal Fisher (batched hooks vs the per-sample loop) and of the EWC penalty's
per-step cost as earlier tasks accumulate (separate terms vs online running sums).

    python scripts/bench_fisher.py [--samples 1000] [--batch-size 128] [--chunk 250] [--max-tasks 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from cl_bench.data.task import Task, TensorSplit
from cl_bench.methods.base import TrainContext
from cl_bench.methods.ewc import EWC
from cl_bench.methods.fisher import diagonal_fisher, diagonal_fisher_loop
from cl_bench.models.mlp import MLP
from cl_bench.scenario import Scenario


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with its `fc` as the cl_bench `.head`."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.features = torchvision.models.resnet18(num_classes=n_outputs)
        self.head = self.features.fc
        self.features.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 784-400-400-10": (lambda: MLP((1, 28, 28), 10, [400, 400]), (1, 28, 28)),
    "ResNet-18 64x64": (lambda: ResNet18(10), (3, 64, 64)),
}


def random_split(n: int, shape: tuple[int, ...]) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


def bench_fisher(name: str, samples: int, batch_size: int, chunk: int) -> None:
    """Both implementations over the same examples, alternating every `chunk` examples so that both
    see the same machine load; the Fisher of all examples is the size-weighted mean of the chunks'."""
    build, shape = MODELS[name]
    model, split, scenario = build(), random_split(samples, shape), Scenario("class", [10])
    implementations = {"fast": diagonal_fisher, "loop": diagonal_fisher_loop}
    seconds = dict.fromkeys(implementations, 0.0)
    totals: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in implementations}
    diagonal_fisher(model, split, torch.arange(min(batch_size, samples)), 0, scenario, "true", batch_size)
    for part in torch.arange(samples).split(chunk):
        for kind, fisher in implementations.items():
            started = time.perf_counter()
            result = fisher(model, split, part, 0, scenario, "true", batch_size)
            seconds[kind] += time.perf_counter() - started
            for key, value in result.items():
                totals[kind][key] = totals[kind].get(key, 0) + value * len(part) / samples
    fast, loop = totals["fast"], totals["loop"]
    error = max(float((fast[k] - loop[k]).norm() / loop[k].norm()) for k in fast)
    print(
        f"{name:20s} {samples} samples: fast {seconds['fast']:7.2f} s   loop {seconds['loop']:7.2f} s   "
        f"loop/fast {seconds['loop'] / seconds['fast']:5.1f}x   max rel. difference {error:.1e} (float32)"
    )


def penalty_step_seconds(method: EWC, ctx: TrainContext, repeats: int = 15) -> float:
    """Median time of the penalty's share of a step: its value and its backward pass."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        term = method.loss_terms(ctx, None, None)["ewc"]
        term.backward()
        times.append(time.perf_counter() - started)
    ctx.model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def bench_penalty(name: str, max_tasks: int) -> None:
    build, shape = MODELS[name]
    model, split = build(), random_split(8, shape)
    tasks = [Task(f"t{t}", split, split, split, [str(c) for c in range(10)], shape) for t in range(max_tasks + 1)]
    scenario = Scenario("domain", [10] * len(tasks))
    methods = {mode: EWC(fisher_samples=8, mode=mode) for mode in ("separate", "online")}
    generator = torch.Generator().manual_seed(0)
    print(f"{name}: penalty + its backward per step (ms), {sum(p.numel() for p in model.parameters()):,} parameters")
    print("  earlier tasks   separate   online")
    for t in range(max_tasks):
        ctx = TrainContext(model, tasks, scenario, t, torch.device("cpu"), generator, 8)
        for method in methods.values():
            method.after_task(ctx)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        if (t + 1) % 2 == 0:
            ctx = TrainContext(model, tasks, scenario, t + 1, torch.device("cpu"), generator, 8)
            ms = {mode: 1e3 * penalty_step_seconds(m, ctx) for mode, m in methods.items()}
            print(f"  {t + 1:13d}   {ms['separate']:8.2f}   {ms['online']:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=250, help="examples per alternation of fast and loop")
    parser.add_argument("--max-tasks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 resists other processes' load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for name in MODELS:
        bench_fisher(name, args.samples, args.batch_size, args.chunk)
    for name in MODELS:
        bench_penalty(name, args.max_tasks)


if __name__ == "__main__":
    main()
