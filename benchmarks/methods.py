"""What the methods cost: a training step of EWC (separate and online), L2, KD (recorded and live
teacher) and replay against the baseline's on the same work, in domain-IL and in task-IL with 5 tasks
(`steps`; replay's row is set against the baseline's step on twice the batch, its floor); KD's step in
task-IL with 10 and 20 old tasks (`kd_groups`); the diagonal Fisher (batched hooks vs the per-sample loop,
`fisher`); and the EWC penalty's per-step cost as earlier tasks
accumulate (separate terms vs online running sums, `penalty`). One torch thread by default.

    python benchmarks/methods.py [--parts steps kd_groups fisher penalty] [--steps 20] [--rounds 7] [--threads 1]
        [--samples 1000] [--batch-size 128] [--chunk 250] [--max-tasks 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from cl_bench.core.scenario import Scenario
from cl_bench.data.task import Task, TensorSplit
from cl_bench.engine.device import forward_autocast
from cl_bench.engine.step import Step
from cl_bench.methods.base import Batch, Method, TrainContext, TrainData
from cl_bench.methods.baseline import Baseline
from cl_bench.methods.ewc import EWC
from cl_bench.methods.fisher import diagonal_fisher, diagonal_fisher_loop
from cl_bench.methods.kd import KD
from cl_bench.methods.l2 import L2
from cl_bench.methods.replay import Replay
from cl_bench.models.head import grow_head
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import resnet18

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 784-400-400-10": (lambda: MLP((1, 28, 28), 10, [400, 400]), (1, 28, 28)),
    "ResNet-18 64x64": (lambda: resnet18((3, 64, 64), 10), (3, 64, 64)),
}


def random_split(n: int, shape: tuple[int, ...]) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


CPU = torch.device("cpu")
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}
STEP_METHODS: dict[str, Callable[[], Method]] = {
    "baseline": Baseline,
    "ewc (separate)": lambda: EWC(lambda_=100.0, fisher_samples=200),
    "ewc (online)": lambda: EWC(lambda_=100.0, fisher_samples=200, mode="online"),
    "l2": lambda: L2(lambda_=0.1),
    "kd (recorded teacher)": lambda: KD(teacher="recorded"),
    "kd (live teacher)": lambda: KD(teacher="live"),
    "replay": lambda: Replay(memory_size=200),
}
TWICE_THE_BATCH = "baseline, batch x2"
# (scenario, tasks, classes per task): the step timed is one of the last task's.
STEP_SCENARIOS = {"domain-IL, 2 tasks": ("domain", 2, 10), "task-IL, 5 tasks": ("task", 5, 2)}
# KD's old-task groups: task-IL with many old tasks, where a per-group loop would show.
KD_SCENARIOS = {"task-IL, 10 old tasks": ("task", 11, 2), "task-IL, 20 old tasks": ("task", 21, 2)}
KD_METHODS = {name: STEP_METHODS[name] for name in ("baseline", "kd (recorded teacher)", "kd (live teacher)")}


def prepared_step(
    name: str, make: Callable[[], Method], batch_size: int, scenario_name: str, n_tasks: int, n_classes: int,
    device: torch.device = CPU, precision: str = "fp32", n_examples: int = 2000, optimizer_name: str = "sgd",
) -> Callable[[], None]:
    """A training step of the last task under the method made by `make`, exactly as the trainer takes it
    (extend_batch, forward and loss terms under the precision's autocast, backward, after_backward, the optimiser's
    step (SGD with momentum, or Adam), after_step, the loss terms' running sums) on `device`, every earlier task
    having ended (its `after_task`) after a random move of the parameters; batches drawn from `n_examples` random
    examples."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(n_examples, *shape, generator=g),
                        torch.randint(0, n_classes, (n_examples,), generator=g)).to(device)
    tasks = [Task(f"t{t}", split, split, split, [str(c) for c in range(n_classes)], shape) for t in range(n_tasks)]
    scenario, method, generator = Scenario(scenario_name, [n_classes] * n_tasks), make(), torch.Generator().manual_seed(0)
    model = build()
    model.head = nn.Linear(model.head.in_features, scenario.n_outputs(0))  # the first task's head
    model.to(device)
    for t in range(n_tasks):
        grow_head(model, scenario.n_outputs(t))
        task_ids = torch.full((len(split),), t, device=device)
        ctx = TrainContext(model, tasks, scenario, t, device, generator, batch_size, TrainData(split, task_ids))
        method.before_task(ctx)
        if t < n_tasks - 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            method.after_task(ctx)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    train_step = Step(method, scenario, optimizer, forward_autocast(precision, device), torch.float64)
    weight = method.task_loss_weight(ctx)
    sums: dict[str, torch.Tensor] = {}
    model.train()

    def step() -> None:
        index = torch.randint(0, len(split), (batch_size,), generator=generator).to(device, non_blocking=True)
        x, y = split.gather(index)
        train_step(ctx, Batch(x, y, task_ids.index_select(0, index), index), weight, sums)

    return step


def bench_steps(
    name: str, batch_size: int, steps: int, rounds: int = 7, scenarios: dict = STEP_SCENARIOS,
    methods: dict[str, Callable[[], Method]] = STEP_METHODS,
) -> None:
    """Per-step time of each method in each scenario, in interleaved rounds (the machine is shared), as
    a ratio to the baseline's in the same scenario (medians over rounds): wall time, and the process's CPU
    time, which other processes on the machine inflate less (with one thread it is the step's own work)."""
    for label, (scenario_name, n_tasks, n_classes) in scenarios.items():
        prepared = {
            method: prepared_step(name, make, batch_size, scenario_name, n_tasks, n_classes)
            for method, make in methods.items()
        }
        if "replay" in prepared:  # replay's floor: the baseline's step on its batch size, twice the batch
            prepared[TWICE_THE_BATCH] = prepared_step(name, Baseline, 2 * batch_size, scenario_name, n_tasks, n_classes)
        times: dict[str, list[float]] = {method: [] for method in prepared}
        cpu: dict[str, list[float]] = {method: [] for method in prepared}
        for _ in range(rounds):
            for method, step in prepared.items():
                step()
                started, started_cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    step()
                times[method].append((time.perf_counter() - started) / steps)
                cpu[method].append((time.process_time() - started_cpu) / steps)
        base, base_cpu = statistics.median(times["baseline"]), statistics.median(cpu["baseline"])
        print(f"{name}, {label}: a step of the last task, batch {batch_size} (medians of {rounds} interleaved rounds)")
        print("  method                  ms/step   vs baseline   CPU ms/step   CPU vs baseline")
        for method in prepared:
            ms, cpu_ms = statistics.median(times[method]), statistics.median(cpu[method])
            print(f"  {method:22s} {1e3 * ms:8.2f}   {ms / base:9.2f}x   {1e3 * cpu_ms:11.2f}   {cpu_ms / base_cpu:13.2f}x")


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
    """Median time of the penalty's share of a step: its gradient added to the gradients after backward
    (`after_backward`; its value is computed only where a row is logged)."""
    for p in ctx.model.parameters():
        p.grad = torch.zeros_like(p)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        method.after_backward(ctx)
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
    print(f"{name}: penalty gradient per step (ms), {sum(p.numel() for p in model.parameters()):,} parameters")
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


PARTS = ("steps", "kd_groups", "fisher", "penalty")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=250, help="examples per alternation of fast and loop")
    parser.add_argument("--max-tasks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 resists other processes' load)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="tables to print")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the step-cost table")
    parser.add_argument("--step-batch-size", type=int, default=128, help="training batch of the step-cost table")
    parser.add_argument("--steps", type=int, default=20, help="steps per round of the step-cost table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    if "steps" in args.parts:
        bench_steps("MLP 784-400-400-10", args.step_batch_size, args.steps, args.rounds)
    if "kd_groups" in args.parts:
        bench_steps("MLP 784-400-400-10", args.step_batch_size, args.steps, args.rounds, KD_SCENARIOS, KD_METHODS)
    for name in MODELS if "fisher" in args.parts else ():
        bench_fisher(name, args.samples, args.batch_size, args.chunk)
    for name in MODELS if "penalty" in args.parts else ():
        bench_penalty(name, args.max_tasks)


if __name__ == "__main__":
    main()
