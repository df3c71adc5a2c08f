"""What the methods cost: a training step of EWC and KD (recorded vs live teacher) against the
baseline's on the same work, the diagonal Fisher (batched hooks vs the per-sample loop), and the EWC
penalty's per-step cost as earlier tasks accumulate (separate terms vs online running sums).

    python benchmarks/methods.py [--samples 1000] [--batch-size 128] [--chunk 250] [--max-tasks 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from cl_bench.data.task import Task, TensorSplit
from cl_bench.engine.scenario import Scenario
from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.baseline import Baseline
from cl_bench.methods.ewc import EWC
from cl_bench.methods.fisher import diagonal_fisher, diagonal_fisher_loop
from cl_bench.methods.kd import KD
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import resnet18

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 784-400-400-10": (lambda: MLP((1, 28, 28), 10, [400, 400]), (1, 28, 28)),
    "ResNet-18 64x64": (lambda: resnet18((3, 64, 64), 10), (3, 64, 64)),
}


def random_split(n: int, shape: tuple[int, ...]) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


STEP_METHODS: dict[str, Callable[[], Method]] = {
    "baseline": Baseline,
    "ewc (separate)": lambda: EWC(lambda_=100.0, fisher_samples=1000),
    "ewc (online)": lambda: EWC(lambda_=100.0, fisher_samples=1000, mode="online"),
    "kd (recorded teacher)": lambda: KD(teacher="recorded"),
    "kd (live teacher)": lambda: KD(teacher="live"),
}


def prepared_step(name: str, make: Callable[[], Method], batch_size: int) -> tuple[Callable[[], None], float]:
    """A training step of the second task under the method made by `make`, exactly as the trainer
    takes it (forward, task loss, method terms, backward, SGD step), and the seconds the method's
    one-off work between the tasks took (EWC's Fisher, KD's recorded teacher outputs)."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model, split = build(), random_split(10_000, shape)
    tasks = [Task(f"t{t}", split, split, split, [str(c) for c in range(10)], shape) for t in range(2)]
    scenario, method, generator = Scenario("domain", [10, 10]), make(), torch.Generator().manual_seed(0)
    started = time.perf_counter()
    method.after_task(TrainContext(model, tasks, scenario, 0, torch.device("cpu"), generator, batch_size))
    ctx = TrainContext(model, tasks, scenario, 1, torch.device("cpu"), generator, batch_size)
    method.before_task(ctx)
    one_off = time.perf_counter() - started
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        index = torch.randint(0, len(split), (batch_size,), generator=generator)
        x, y = split.gather(index)
        batch = method.extend_batch(ctx, Batch(x, y, torch.ones_like(y), index))
        logits = model(batch.x)
        loss = scenario.loss(logits, batch.y, batch.task_ids)
        for term in method.loss_terms(ctx, batch, logits).values():
            loss = loss + term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, one_off


def bench_steps(name: str, batch_size: int, steps: int, rounds: int = 5) -> None:
    """Per-step time of each method, in interleaved rounds (the machine is shared), as a ratio to
    the baseline's; one-off costs between the tasks listed beside it."""
    prepared = {method: prepared_step(name, make, batch_size) for method, make in STEP_METHODS.items()}
    times: dict[str, list[float]] = {method: [] for method in prepared}
    for _ in range(rounds):
        for method, (step, _) in prepared.items():
            step()
            started = time.perf_counter()
            for _ in range(steps):
                step()
            times[method].append((time.perf_counter() - started) / steps)
    base = statistics.median(times["baseline"])
    print(f"{name}: a training step of task 2, batch {batch_size} (medians of {rounds} interleaved rounds)")
    print("  method                  ms/step   vs baseline   one-off before task 2 (s)")
    for method, (_, one_off) in prepared.items():
        ms = statistics.median(times[method])
        print(f"  {method:22s} {1e3 * ms:8.2f}   {ms / base:9.2f}x   {one_off:8.2f}")


def bench_fisher(name: str, samples: int, batch_size: int, chunk: int) -> None:
    """Both implementations over the same examples, alternating every `chunk` examples so that both
    see the same machine load; the Fisher of all examples is the size-weighted mean of the chunks'."""
    build, shape = MODELS[name]
    model, split, scenario = build(), random_split(samples, shape), Scenario("class", [10])
    implementations = {"fast": diagonal_fisher, "loop": diagonal_fisher_loop}
    seconds = dict.fromkeys(implementations, 0.0)
    totals: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in implementations}
    diagonal_fisher(model, split, torch.arange(min(batch_size, samples)), 0, scenario, "empirical", batch_size)
    for part in torch.arange(samples).split(chunk):
        for kind, fisher in implementations.items():
            started = time.perf_counter()
            result = fisher(model, split, part, 0, scenario, "empirical", batch_size)
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
    parser.add_argument("--step-batch-size", type=int, default=128, help="training batch of the step-cost table")
    parser.add_argument("--steps", type=int, default=20, help="steps per round of the step-cost table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    bench_steps("MLP 784-400-400-10", args.step_batch_size, args.steps)
    for name in MODELS:
        bench_fisher(name, args.samples, args.batch_size, args.chunk)
    for name in MODELS:
        bench_penalty(name, args.max_tasks)


if __name__ == "__main__":
    main()
