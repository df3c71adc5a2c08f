"""Does `torch.compile` pay for the training step on this CPU? The MLP 784-400-400-10 step (forward,
cross-entropy, backward, SGD with momentum) eager against the same step with the model compiled
(TorchInductor, forward and backward graphs), interleaved rounds, one thread by default; plus the
one-off compile time a run would pay. The product has no compile option unless this pays.

    python benchmarks/compile.py [--steps 50] [--rounds 7] [--batch-size 128] [--threads 1] [--mode default]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.models.mlp import MLP


def make_step(model: nn.Module, forward: Callable, batch_size: int) -> Callable[[], torch.Tensor]:
    """One training step on a fresh random batch, as the trainer takes it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (4096,), generator=generator)

    def step() -> torch.Tensor:
        index = torch.randint(0, len(x), (batch_size,), generator=generator)
        loss = F.cross_entropy(forward(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", default="default", help="torch.compile mode (default, reduce-overhead, max-autotune)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    torch.manual_seed(0)
    eager_model = MLP((1, 28, 28), 10, [400, 400])
    torch.manual_seed(0)
    compiled_model = MLP((1, 28, 28), 10, [400, 400])
    compiled = torch.compile(compiled_model, mode=args.mode)
    steps = {
        "eager": make_step(eager_model, eager_model, args.batch_size),
        f"compiled ({args.mode})": make_step(compiled_model, compiled, args.batch_size),
    }
    started = time.perf_counter()
    first = steps[f"compiled ({args.mode})"]()
    compile_seconds = time.perf_counter() - started
    print(f"first compiled step (compiling forward and backward): {compile_seconds:.1f} s")
    assert torch.allclose(first, steps["eager"](), rtol=1e-4), "the compiled step computes another loss"

    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            step()
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - started) / args.steps)
            cpu[name].append((time.process_time() - started_cpu) / args.steps)
    eager, eager_cpu = statistics.median(times["eager"]), statistics.median(cpu["eager"])
    print(f"MLP 784-400-400-10, batch {args.batch_size}: medians of {args.rounds} interleaved rounds of {args.steps} steps")
    for name, values in times.items():
        ms, cpu_ms = statistics.median(values), statistics.median(cpu[name])
        print(f"  {name:24s} {1e3 * ms:7.2f} ms/step   {ms / eager:5.2f}x eager   CPU {1e3 * cpu_ms:7.2f} ms/step   "
              f"{cpu_ms / eager_cpu:5.2f}x eager")
    saved = eager - statistics.median(times[f"compiled ({args.mode})"])
    if saved > 0:
        print(f"  break-even after {compile_seconds / saved:,.0f} steps")
    else:
        print("  compiled is not faster: it never pays back its compile time")


if __name__ == "__main__":
    main()
