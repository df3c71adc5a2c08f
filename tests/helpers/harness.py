"""A tiny harness for unit tests of methods: tasks of random tensors, a seeded MLP, and the TrainContext
a method sees, built as the trainer builds them (on the CPU, without a run)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cl_bench.core.scenario import Scenario
from cl_bench.data.task import Task, TensorSplit
from cl_bench.methods.base import Batch, Method, TrainContext, TrainData
from cl_bench.models.head import grow_head
from cl_bench.models.mlp import MLP


def random_split(
    n: int, shape: tuple[int, ...], n_classes: int, generator: torch.Generator | int = 0,
    dtype: torch.dtype = torch.float64, labels: str = "random",
) -> TensorSplit:
    """`n` standard-normal inputs of `shape` drawn from `generator` (or a new one seeded with it), with
    labels drawn from it too (`random`) or 0, 1, ..., n_classes - 1, 0, 1, ... (`cyclic`)."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    x = torch.randn(n, *shape, generator=generator, dtype=dtype)
    y = torch.arange(n) % n_classes if labels == "cyclic" else torch.randint(0, n_classes, (n,), generator=generator)
    return TensorSplit(x, y)


def one_split_task(name: str, split: TensorSplit, n_classes: int) -> Task:
    """A task whose train, val and test splits are all `split`, its classes named "0", "1", ..."""
    return Task(name, split, split, split, [str(c) for c in range(n_classes)], tuple(split.x.shape[1:]))


def random_tasks(
    n_tasks: int, shape: tuple[int, ...], n_classes: int, n: int, seed: int,
    dtype: torch.dtype = torch.float64, labels: str = "random",
) -> list[Task]:
    """Tasks t0, t1, ... of `random_split`s, drawn in turn from one generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [one_split_task(f"t{t}", random_split(n, shape, n_classes, generator, dtype, labels), n_classes)
            for t in range(n_tasks)]


def seeded_mlp(
    input_shape: tuple[int, ...], n_outputs: int, hidden: list[int], seed: int = 0, dropout: float = 0.0,
    dtype: torch.dtype | None = None,
) -> MLP:
    """cl_bench's MLP, initialised after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    model = MLP(input_shape, n_outputs, hidden, dropout)
    return model if dtype is None else model.to(dtype)


def train_context(
    model: torch.nn.Module, tasks: list[Task], scenario: Scenario, task_idx: int,
    generator: torch.Generator | None = None, batch_size: int = 8, data: TrainData | None = None,
) -> TrainContext:
    """What a method sees during task `task_idx`'s main steps: the CPU, a new generator seeded 0 unless given,
    and the data its batches are drawn from (the task's training split unless given)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    ctx = TrainContext(model, tasks, scenario, task_idx, torch.device("cpu"), generator, batch_size)
    ctx.data = data if data is not None else Method().train_data(ctx)
    return ctx


def start_task(
    model: torch.nn.Module, tasks: list[Task], scenario: Scenario, task_idx: int, *methods: Method,
    generator: torch.Generator | None = None, batch_size: int = 8,
) -> TrainContext:
    """What the trainer does at a task's start: grow the head to the scenario's units, then each
    method's before_task."""
    grow_head(model, scenario.n_outputs(task_idx))
    ctx = train_context(model, tasks, scenario, task_idx, generator, batch_size)
    for method in methods:
        method.before_task(ctx)
    return ctx


def nudge(model: torch.nn.Module, scale: float, seed: int | None = None) -> None:
    """Move every parameter by scale·N(0, 1), as training would: noise from a generator seeded `seed`,
    or from torch's global one."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def batch_of(task: Task, task_idx: int, index: Sequence[int] | torch.Tensor) -> Batch:
    """The training examples `index` of `task` as the trainer's batch of task `task_idx`."""
    index = torch.as_tensor(index)
    x, y = task.train.gather(index)
    return Batch(x, y, torch.full_like(y, task_idx), index)
