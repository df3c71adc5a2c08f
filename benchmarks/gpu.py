#!/usr/bin/env python
"""What a GPU does for the two-cities experiment, measured on the device present: CUDA, else the CPU at tiny sizes
(`--smoke`, automatic without CUDA: the benchmark's own check, not a measurement).

- the training step (ResNet-18 at 224, batch 64, Adam, class-IL over 192 units: benchmarks/methods.py's copy of the
  trainer's step) in fp32 and bf16, channels-last off and on: images/s and peak GPU memory;
- evaluation (inference, batch 256) in the device's default precision and layout (precision=auto, channels_last=auto);
- the image loader onto the device: images/s of training batches from the JPEG files and from the decoded cache at
  1, 2, 4 and 8 workers, and of building the cache (benchmarks/image_loader.py's generated 640x480 photos);
- a step with EWC, KD, replay and DER against the baseline's (interleaved, medians), in the default settings;
- docs/experiments.md's cost estimate of the two-cities table (six rows, three sweeps), recomputed from the above.

    python benchmarks/gpu.py                   # on a CUDA device: 2-4 minutes (scripts/gpu_check.sh runs it)
    python benchmarks/gpu.py --smoke           # tiny sizes, seconds (what the tests run, on the CPU)
    python benchmarks/gpu.py --json gpu.json   # every figure, also as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from image_loader import generate, loader_rates
from methods import MODELS, prepared_step

from cl_bench.engine.device import device_description, forward_autocast, uses_bf16
from cl_bench.methods.base import Method
from cl_bench.methods.baseline import Baseline
from cl_bench.methods.der import DER
from cl_bench.methods.ewc import EWC
from cl_bench.methods.kd import KD
from cl_bench.methods.replay import Replay
from cl_bench.models.resnet import resnet18

CLASSES_PER_TASK = 96  # two tasks of 96: the 192 units of VMMRdb's 182 classes and the colours' 10
# docs/experiments.md's estimate ("Cost on one GPU"): the work it prices, and what it assumed.
ESTIMATE = {
    "files_checked": 290_000, "images_kept": 165_000,
    "task_a_steps": 10_000, "task_a_evaluations": 41, "task_a_eval_images": 15_000,
    "task_b_steps": 5_000, "task_b_evaluations": 21, "task_b_eval_images": 16_500,
}
TASK_B_RUNS = {"baseline": 2, "ewc": 10, "kd": 10}  # the three sweeps: 22 task-B runs
DOCS_ESTIMATE = "check ~6 min, cache ~4 min, task A ~5 min, a task-B run ~2.5 min, the six rows ~1-1.5 h"


@dataclass(frozen=True)
class Sizes:
    """What is measured: the input's side, the batch, steps timed per measurement (after `warmup`), interleaved
    rounds of the method steps, generated JPEGs and their size, worker counts, examples the steps draw from, and
    the evaluation batch."""

    image_size: int
    batch_size: int
    steps: int
    warmup: int
    rounds: int
    images: int
    photo: tuple[int, int]
    workers: tuple[int, ...]
    examples: int
    eval_batch_size: int


FULL = Sizes(224, 64, 30, 5, 3, 1200, (640, 480), (1, 2, 4, 8), 256, 256)
SMOKE = Sizes(32, 4, 1, 1, 1, 24, (80, 60), (0, 1), 16, 8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> float | None:
    """GB allocated at most since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def resnet(size: int, channels_last: bool) -> str:
    """The name of ResNet-18 at `size` in benchmarks/methods.py's MODELS, added there."""
    name = f"ResNet-18 {size}x{size}" + (" channels-last" if channels_last else "")
    MODELS[name] = (lambda: resnet18((3, size, size), 10, channels_last=channels_last), (3, size, size))
    return name


def step_of(method: Callable[[], Method], sizes: Sizes, device: torch.device, precision: str,
            channels_last: bool) -> Callable[[], None]:
    """The two-cities training step (task B's) with `method`."""
    return prepared_step(resnet(sizes.image_size, channels_last), method, sizes.batch_size, "class", 2,
                         CLASSES_PER_TASK, device, precision, sizes.examples, "adam")


def seconds_per_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / steps


def training(sizes: Sizes, device: torch.device) -> list[dict]:
    """Images/s and peak memory of the baseline's step in each precision and layout."""
    rows = []
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            reset_memory(device)
            step = step_of(Baseline, sizes, device, precision, channels_last)
            for _ in range(sizes.warmup):
                step()
            seconds = seconds_per_step(step, sizes.steps, device)
            rows.append({"precision": precision, "channels_last": channels_last,
                         "images_per_s": sizes.batch_size / seconds, "peak_gb": peak_memory(device)})
            del step
    return rows


def defaults(device: torch.device) -> tuple[str, bool]:
    """The precision and the channels-last layout a run takes on `device` (precision=auto, channels_last=auto)."""
    return ("bf16" if uses_bf16("auto", device) else "fp32"), device.type == "cuda"


def evaluation(sizes: Sizes, device: torch.device) -> float:
    """Images/s of inference in the device's default precision and layout."""
    precision, channels_last = defaults(device)
    model = resnet18((3, sizes.image_size, sizes.image_size), 2 * CLASSES_PER_TASK, channels_last=channels_last)
    model = model.to(device).eval()
    x = torch.randn(sizes.eval_batch_size, 3, sizes.image_size, sizes.image_size, device=device)
    with torch.inference_mode(), forward_autocast(precision, device):
        for _ in range(sizes.warmup):
            model(x)
        seconds = seconds_per_step(lambda: model(x), sizes.steps, device)
    return sizes.eval_batch_size / seconds


METHODS: dict[str, Callable[[], Method]] = {
    "baseline": Baseline,
    "ewc": lambda: EWC(lambda_=1000.0, fisher_samples=16),
    "kd": lambda: KD(teacher="recorded"),
    "replay": lambda: Replay(memory_size=200),
    "der": lambda: DER(buffer_size=200),
}


def method_steps(sizes: Sizes, device: torch.device) -> dict[str, dict]:
    """Each method's step time against the baseline's (medians over interleaved rounds) and its peak memory, in the
    device's default precision and layout."""
    precision, channels_last = defaults(device)
    steps, peaks = {}, {}
    for name, method in METHODS.items():
        reset_memory(device)
        steps[name] = step_of(method, sizes, device, precision, channels_last)
        for _ in range(sizes.warmup):
            steps[name]()
        peaks[name] = peak_memory(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(sizes.rounds):
        for name, step in steps.items():
            times[name].append(seconds_per_step(step, sizes.steps, device))
    base = statistics.median(times["baseline"])
    return {name: {"ms": 1e3 * statistics.median(t), "vs_baseline": statistics.median(t) / base, "peak_gb": peaks[name]}
            for name, t in times.items()}


def loader(sizes: Sizes, device: torch.device, scratch: Path) -> dict[str, dict[int, float]]:
    """Images/s of training batches onto `device` from the files and from the decoded cache by worker count, and of
    building the cache."""
    root = scratch / "images"
    generate(root, sizes.images, size=sizes.photo)
    return loader_rates(root, sizes.image_size, list(sizes.workers), sizes.batch_size, 1, scratch / "cache",
                        str(device))


def estimate(train: float, evaluate: float, files: float, cached: float, ratios: dict[str, float],
             batch: int = 64) -> dict[str, float]:
    """docs/experiments.md's estimate in minutes, from images/s of training (`train`), evaluation, reading the files
    (the check and the cache's build decode at that rate) and the decoded cache (training reads from it: the slower of
    the two bounds a step), and each method's step against the baseline's."""
    fed = min(train, cached)
    evaluations = lambda task: ESTIMATE[f"task_{task}_evaluations"] * ESTIMATE[f"task_{task}_eval_images"] / evaluate
    task_b = {name: (ESTIMATE["task_b_steps"] * batch * ratios[name] / fed + evaluations("b")) / 60
              for name in TASK_B_RUNS}
    parts = {
        "check": ESTIMATE["files_checked"] / files / 60,
        "cache": ESTIMATE["images_kept"] / files / 60,
        "task_a": (ESTIMATE["task_a_steps"] * batch / fed + evaluations("a")) / 60,
        **{f"task_b_{name}": minutes for name, minutes in task_b.items()},
    }
    parts["six_rows"] = (parts["check"] + parts["cache"] + parts["task_a"]
                         + sum(runs * task_b[name] for name, runs in TASK_B_RUNS.items()))
    return parts


def gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GB"


def report(figures: dict) -> None:
    """The short table a person with a GPU reads."""
    sizes = figures["sizes"]
    print(f"\n{figures['device']}, torch {figures['torch']}"
          + (" (smoke sizes: a check of this benchmark, not a measurement)" if figures["smoke"] else ""))
    print(f"training step, ResNet-18 {sizes['image_size']}px, batch {sizes['batch_size']}, Adam:")
    print("  precision  channels-last  images/s  peak memory")
    for row in figures["training"]:
        print(f"  {row['precision']:9s}  {'on' if row['channels_last'] else 'off':13s}  {row['images_per_s']:8.0f}"
              f"  {gb(row['peak_gb'])}")
    print(f"evaluation ({figures['default']}): {figures['evaluation']:.0f} images/s")
    load = figures["loader"]
    print(f"loader, {sizes['photo'][0]}x{sizes['photo'][1]} JPEGs to {sizes['image_size']}px, images/s at "
          f"{' / '.join(map(str, load['files']))} workers:")
    print(f"  from the files          {' / '.join(f'{rate:.0f}' for rate in load['files'].values())}")
    print(f"  from the decoded cache  {' / '.join(f'{rate:.0f}' for rate in load['cache'].values())}"
          f"  (built at {next(iter(load['build'].values())):.0f})")
    print(f"a step against the baseline's ({figures['default']}):  "
          + ", ".join(f"{name} {m['vs_baseline']:.2f}x ({gb(m['peak_gb'])})" for name, m in figures["methods"].items()
                      if name != "baseline"))
    e = figures["estimate"]
    print(f"two-cities estimate (docs/experiments.md): check {e['check']:.0f} min, cache {e['cache']:.0f} min, task A "
          f"{e['task_a']:.0f} min, a task-B run {e['task_b_baseline']:.1f} (baseline) / {e['task_b_ewc']:.1f} (EWC) / "
          f"{e['task_b_kd']:.1f} (KD) min, the six rows {e['six_rows'] / 60:.1f} h")
    print(f"  (the docs' estimate, made without a GPU: {DOCS_ESTIMATE})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the default without CUDA)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke or device.type != "cuda"
    sizes = SMOKE if smoke else FULL
    if device.type == "cpu":  # the smoke run: one thread, as the tests run beside others
        torch.set_num_threads(1)
    precision, channels_last = defaults(device)
    figures: dict = {"device": device_description(device), "torch": torch.__version__, "smoke": smoke,
                     "sizes": asdict(sizes), "default": f"{precision}, channels-last {'on' if channels_last else 'off'}"}
    started = time.perf_counter()
    figures["training"] = training(sizes, device)
    figures["evaluation"] = evaluation(sizes, device)
    figures["methods"] = method_steps(sizes, device)
    with tempfile.TemporaryDirectory() as scratch:
        figures["loader"] = loader(sizes, device, Path(scratch))
    train = next(row["images_per_s"] for row in figures["training"]
                 if row["precision"] == precision and row["channels_last"] == channels_last)
    most = max(sizes.workers)
    figures["estimate"] = estimate(train, figures["evaluation"], figures["loader"]["files"][most],
                                   figures["loader"]["cache"][most],
                                   {name: m["vs_baseline"] for name, m in figures["methods"].items()})
    figures["seconds"] = time.perf_counter() - started
    report(figures)
    print(f"({figures['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
