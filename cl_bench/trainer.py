"""The one training loop every method runs through: tasks in sequence, evaluation of every task's
val split every `eval_every` steps, and the accuracy matrix on the test splits at each task end."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from cl_bench.evaluation import accuracies
from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.models.head import grow_head
from cl_bench.optim import build_optimizer
from cl_bench.scenario import Scenario
from cl_bench.data.task import Task


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; raised at the next evaluation boundary."""


@dataclass
class SequenceResult:
    """What a finished sequence leaves behind besides its metrics rows."""

    val_matrix: list[list[float]] = field(default_factory=list)
    test_matrix: list[list[float]] = field(default_factory=list)
    best_test: list[float] = field(default_factory=list)
    train_steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def task_steps(budget: DictConfig, n_examples: int, batch_size: int) -> int:
    """Steps of a task from a budget that gives `steps` or `epochs`."""
    if budget.get("epochs") is not None:
        return max(1, math.ceil(budget.epochs * n_examples / batch_size))
    return int(budget.steps)


def index_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """`steps` batches of indices, drawn epoch by epoch from seeded permutations of range(n);
    an epoch's last incomplete batch is dropped."""
    batch_size = min(batch_size, n)
    drawn = 0
    while drawn < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            if drawn == steps:
                return
            yield order[start : start + batch_size]
            drawn += 1


class Trainer:
    """Trains `model` on `tasks` with `method`, calling `on_eval(row)` at every evaluation point."""

    def __init__(
        self,
        cfg: DictConfig,
        tasks: list[Task],
        model: nn.Module,
        method: Method,
        scenario: Scenario,
        device: torch.device,
        on_eval: Callable[[dict], None],
        on_task_end: Callable[[int, nn.Module, Method], None] = lambda k, model, method: None,
    ):
        self.cfg = cfg
        self.tasks = tasks
        self.model = model
        self.method = method
        self.scenario = scenario
        self.device = device
        self.on_eval = on_eval
        self.on_task_end = on_task_end
        self.sampler_generator = torch.Generator().manual_seed(cfg.seed)
        self.method_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.result = SequenceResult()
        self.global_step = 0
        self._best: tuple[float, dict[str, Tensor]] | None = None

    def context(self, task_idx: int) -> TrainContext:
        return TrainContext(
            self.model, self.tasks, self.scenario, task_idx, self.device, self.method_generator, self.cfg.batch_size
        )

    def run(self) -> SequenceResult:
        for task_idx in range(len(self.tasks)):
            self.train_task(task_idx)
        self.result.best_test = self._best_model_test()
        return self.result

    def train_task(self, task_idx: int) -> None:
        grow_head(self.model, self.scenario.n_outputs(task_idx))
        ctx = self.context(task_idx)
        self.method.before_task(ctx)
        data = self.method.train_data(ctx)
        budget = self.cfg.first_task if task_idx == 0 else self.cfg
        steps = task_steps(budget, len(data.split), self.cfg.batch_size)
        lr = self.cfg.first_task.lr if task_idx == 0 else self.cfg.lr
        optimizer = build_optimizer(self.cfg.optimizer, self.model.parameters(), lr)
        task_ids = data.task_ids.to(self.device)
        sums: dict[str, Tensor] = {}
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        since = 0
        self.evaluate(task_idx, 0, {}, 0)
        self.model.train()
        progress = tqdm(total=steps, desc=f"task {task_idx} {self.tasks[task_idx].name}", disable=None, mininterval=1.0)
        indices = list(index_batches(len(data.split), self.cfg.batch_size, steps, self.sampler_generator))
        started = time.perf_counter()
        for step, (index, (x, y)) in enumerate(zip(indices, data.split.batches(indices)), start=1):
            batch = Batch(x, y, task_ids[index.to(self.device)], index.to(self.device))
            batch = self.method.extend_batch(ctx, batch)
            logits = self.model(batch.x)
            terms = {"task": self.scenario.loss(logits, batch.y, batch.task_ids)}
            terms.update(self.method.loss_terms(ctx, batch, logits))
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            terms["total"] = loss
            for name, value in terms.items():
                value = value.detach()
                sums[name] = value if name not in sums else sums[name] + value
            nonfinite |= ~torch.isfinite(loss.detach())
            since += 1
            self.global_step += 1
            if step % self.cfg.eval_every == 0 or step == steps:
                self.result.train_steps += since
                self.result.train_seconds += time.perf_counter() - started
                progress.update(since)
                if bool(nonfinite):
                    raise NonFiniteLoss(
                        f"the loss became NaN or infinite between global steps {self.global_step - since + 1} and "
                        f"{self.global_step} (task {task_idx}); lower lr, or check the inputs and the method's weights"
                    )
                self.evaluate(task_idx, step, {k: float(v) / since for k, v in sums.items()}, since)
                sums, since = {}, 0
                self.model.train()
                started = time.perf_counter()
        progress.close()
        self.method.after_task(ctx)
        self.result.val_matrix.append(self.last_val)
        self.result.test_matrix.append(self._timed_accuracies(self.model, "test"))
        self.on_task_end(task_idx, self.model, self.method)

    def _timed_accuracies(self, model: nn.Module, split: str) -> list[float]:
        started = time.perf_counter()
        result = accuracies(model, self.tasks, split, self.scenario, self.cfg.eval_batch_size)
        self.result.eval_seconds += time.perf_counter() - started
        return result

    def evaluate(self, task_idx: int, task_step: int, losses: dict[str, float], steps_since: int) -> None:
        """Every task's val accuracy now; keeps a snapshot of the best model of the Score window."""
        self.last_val = self._timed_accuracies(self.model, "val")
        row = {"step": self.global_step, "task": task_idx, "task_step": task_step}
        row.update({f"val/{t.name}": acc for t, acc in zip(self.tasks, self.last_val)})
        row.update({f"loss/{name}": value for name, value in losses.items()})
        if task_idx == len(self.tasks) - 1:
            mean = sum(self.last_val) / len(self.last_val)
            if self._best is None or mean > self._best[0]:
                snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._best = (mean, snapshot)
        self.on_eval(row)

    def _best_model_test(self) -> list[float]:
        """Test accuracies of the model at the Score's evaluation point."""
        best_model = copy.deepcopy(self.model)
        best_model.load_state_dict(self._best[1])
        return self._timed_accuracies(best_model, "test")
