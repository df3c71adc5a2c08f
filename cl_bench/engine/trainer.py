"""The one training loop every method runs through: tasks in sequence, evaluation of every task's
val split every `eval_every` steps, the accuracy matrix on the test splits at each task end, and a
state that can be saved at any step and resumed to the same metrics."""

from __future__ import annotations

import copy
import math
import operator
import time
from dataclasses import asdict, dataclass, field
from functools import reduce
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from cl_bench.data.task import Task
from cl_bench.engine.device import forward_autocast
from cl_bench.engine.evaluation import ROW_PREFIX, accuracies
from cl_bench.engine.optim import build_optimizer, carried_optimizer
from cl_bench.engine.scenario import Scenario
from cl_bench.methods.base import Batch, Method, TrainContext, TrainData
from cl_bench.models.head import grow_head, reset_parameters


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; raised at the next evaluation or checkpoint boundary."""


class StopRequested(RuntimeError):
    """A signal asked the run to stop; its state was checkpointed first."""


class IncompatibleState(ValueError):
    """A checkpoint written by a cl_bench whose settings meant something else."""


# Checkpoints (and task-A cache entries) are read only by a cl_bench that writes this format: 0.2
# carries the optimiser across tasks by default and renamed EWC's modes; 0.3 files carry a SHA-256.
STATE_FORMAT = "0.3"


@dataclass
class SequenceResult:
    """What a sequence leaves behind besides its metrics rows; accuracies by kind (`evaluation`)."""

    val_matrix: dict[str, list[list[float]]] = field(default_factory=dict)
    test_matrix: dict[str, list[list[float]]] = field(default_factory=dict)
    best_test: dict[str, list[float]] = field(default_factory=dict)
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


class EvaluationCache:
    """Accuracies of the model state evaluated last, by split. Evaluating an unchanged state again
    (a task's step 0 right after the previous task's end when the head does not grow; the test
    split of the Score's model when that model is a task's end) reads them back: evaluation is
    deterministic, so the values are those a new evaluation would give."""

    def __init__(self) -> None:
        self.state: dict[str, Tensor] | None = None
        self.results: dict[str, dict[str, list[float]]] = {}

    def accuracies(
        self, state: dict[str, Tensor], split: str, compute: Callable[[], dict[str, list[float]]]
    ) -> dict[str, list[float]]:
        """`split`'s accuracies under `state`, computed only if this state's are not held yet."""
        if self.state is None or not same_state(self.state, state):
            self.state, self.results = {k: v.detach().clone() for k, v in state.items()}, {}
        if split not in self.results:
            self.results[split] = compute()
        return {kind: list(values) for kind, values in self.results[split].items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Whether two state dicts hold the same keys, shapes and values (NaN equals nothing)."""
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@dataclass
class TaskRun:
    """The state of the task being trained."""

    task_idx: int
    steps: int
    data: TrainData
    task_weight: float
    indices: list[Tensor]
    sampler_state: Tensor
    step: int = 0
    since: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    nonfinite: Tensor | None = None


class Trainer:
    """Trains `model` on `tasks` with `method`; `on_eval(row)` gets every evaluation point,
    `on_checkpoint(state)` every checkpoint (`checkpoint_every` steps, task ends, stop signals)."""

    def __init__(
        self,
        cfg: DictConfig,
        tasks: list[Task],
        model: nn.Module,
        method: Method,
        scenario: Scenario,
        device: torch.device,
        on_eval: Callable[[dict], None],
        on_checkpoint: Callable[[dict], None] = lambda state: None,
    ):
        self.cfg = cfg
        self.tasks = tasks
        self.model = model
        self.method = method
        self.scenario = scenario
        self.device = device
        self.autocast = forward_autocast(cfg.precision, device)  # reused, never nested
        self.on_eval = on_eval
        self.on_checkpoint = on_checkpoint
        self.sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # loss sums (MPS has no float64)
        self.sampler_generator = torch.Generator().manual_seed(cfg.seed)
        self.method_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.result = SequenceResult()
        self.global_step = 0
        self.rows_logged = 0
        self.next_task = 0
        self.current: TaskRun | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.carry_optimizer = cfg.optimizer_state == "carry"
        self.primary = cfg.accuracy  # the accuracy kind the Score and the best-model snapshot follow
        self.last_val: dict[str, list[float]] = {}
        self.best: tuple[float, dict[str, Tensor]] | None = None
        self.evaluations = EvaluationCache()
        self.best_results: dict[str, dict[str, list[float]]] = {}  # the cache's results of the best state, by split
        self.stop_requested = False

    def context(self, task_idx: int) -> TrainContext:
        return TrainContext(
            self.model, self.tasks, self.scenario, task_idx, self.device, self.method_generator, self.cfg.batch_size
        )

    def run(self, first_task: Callable[["Trainer"], None] | None = None) -> SequenceResult:
        """Train every task not yet done; `first_task`, when given, replaces training task 0
        (the task-A cache) and must leave the trainer as `train_task(0)` would."""
        while self.next_task < len(self.tasks):
            task_idx = self.next_task
            if self.current is None and task_idx == 0 and first_task is not None:
                first_task(self)
            else:
                self.train_task(task_idx)
            self.finish_task(task_idx)
        self.result.best_test = self._best_model_test()
        return self.result

    def start_task(self, task_idx: int) -> TaskRun:
        """Grow the head (or restart the model, for a method that asks), let the method prepare,
        set up the optimiser, draw the task's batches; evaluate at step 0."""
        grow_head(self.model, self.scenario.n_outputs(task_idx))
        if task_idx > 0 and self.method.restart_model:
            reset_parameters(self.model)
            self.optimizer = None
        ctx = self.context(task_idx)
        self.method.before_task(ctx)
        self._task_optimizer(task_idx)
        run = self._task_run(task_idx, self.sampler_generator.get_state())
        self.current = run
        self.evaluate(task_idx, 0, {})
        return run

    def _task_optimizer(self, task_idx: int) -> None:
        """The optimiser of a task that starts: the previous one's state carried over (the head's
        added units with zero state), or a new one; at the task's learning rate."""
        lr = self.cfg.first_task.lr if task_idx == 0 else self.cfg.lr
        if self.optimizer is not None and self.carry_optimizer:
            self.optimizer = carried_optimizer(self.optimizer, self.cfg.optimizer, self.model, lr)
        else:
            self.optimizer = build_optimizer(self.cfg.optimizer, self.model.parameters(), lr)

    def _task_run(self, task_idx: int, sampler_state: Tensor) -> TaskRun:
        """The task's data, budget, task-loss weight and batches (drawn from `sampler_state`)."""
        ctx = self.context(task_idx)
        data = self.method.train_data(ctx)
        budget = self.cfg.first_task if task_idx == 0 else self.cfg
        steps = task_steps(budget, len(data.split), self.cfg.batch_size)
        self.sampler_generator.set_state(sampler_state)
        indices = list(index_batches(len(data.split), self.cfg.batch_size, steps, self.sampler_generator))
        data = TrainData(data.split, data.task_ids.to(self.device))
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        weight = self.method.task_loss_weight(ctx)
        return TaskRun(task_idx, steps, data, weight, indices, sampler_state, nonfinite=nonfinite)

    def train_task(self, task_idx: int) -> None:
        """Train task `task_idx` to the end of its budget (continuing a resumed task)."""
        run = self.current if self.current is not None else self.start_task(task_idx)
        ctx = self.context(task_idx)
        self.model.train()
        every, eval_every = self.cfg.checkpoint.every, self.cfg.eval_every  # read once: config access is slow
        progress = tqdm(
            total=run.steps, initial=run.step, desc=f"task {task_idx} {self.tasks[task_idx].name}",
            disable=None, mininterval=1.0,
        )
        remaining = run.indices[run.step :]
        optimizer, task_weight = self.optimizer, run.task_weight
        started = time.perf_counter()
        for index, (x, y) in zip(remaining, run.data.split.batches(remaining)):
            index = index.to(self.device)
            batch = self.method.extend_batch(ctx, Batch(x, y, run.data.task_ids.index_select(0, index), index))
            with self.autocast:
                logits = self.model(batch.x)
                task_loss = self._task_loss(logits, batch, len(y))
                terms = {"task": task_loss if task_weight == 1 else task_weight * task_loss}
                terms.update(self.method.loss_terms(ctx, batch, logits))
            loss = reduce(operator.add, terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            terms["total"] = loss
            for name, value in terms.items():  # running sums on the device, read at evaluation
                run.sums[name] = run.sums[name] + value.detach() if name in run.sums else value.detach().to(self.sum_dtype)
            run.step += 1
            run.since += 1
            self.global_step += 1
            at_eval = run.step % eval_every == 0 or run.step == run.steps
            at_checkpoint = bool(every) and self.global_step % every == 0
            if at_eval or at_checkpoint or self.stop_requested:
                self.result.train_seconds += time.perf_counter() - started
                progress.update(run.step - progress.n)
                self._check_finite(run)
                if at_eval:
                    self.result.train_steps += run.since
                    means = {name: float(value) / run.since for name, value in run.sums.items()}
                    run.sums, run.since = {}, 0
                    self.evaluate(task_idx, run.step, means)
                    self.model.train()
                if (at_checkpoint and run.step < run.steps) or self.stop_requested:
                    self.on_checkpoint(self.state_dict())
                if self.stop_requested:
                    raise StopRequested(f"stopped at global step {self.global_step}; state checkpointed")
                started = time.perf_counter()
        progress.close()

    def _task_loss(self, logits: Tensor, batch: Batch, n_own: int) -> Tensor:
        """Mean cross-entropy of the task's own examples: the batch's first `n_own` (a method that
        extends the batch, such as replay, adds its examples after them and weighs them itself)."""
        if len(batch.y) == n_own:
            return self.scenario.loss(logits, batch.y, batch.task_ids)
        return self.scenario.loss(logits[:n_own], batch.y[:n_own], batch.task_ids[:n_own])

    def _check_finite(self, run: TaskRun) -> None:
        """Raise if a step's loss was NaN or infinite since the last evaluation. The running sum of the
        total loss is non-finite exactly when one was (in float64 finite float32 losses cannot overflow
        it), so steps do no check of their own: one host sync per boundary."""
        if "total" in run.sums:
            run.nonfinite |= ~torch.isfinite(run.sums["total"])
        if bool(run.nonfinite):
            first = self.global_step - run.since + 1
            raise NonFiniteLoss(
                f"the loss became NaN or infinite between global steps {first} and {self.global_step} "
                f"(task {run.task_idx}); lower lr, check the inputs, or the method's weights"
            )

    def finish_task(self, task_idx: int) -> None:
        """After-task hook, accuracy-matrix rows, and a checkpoint of the finished task."""
        self.method.after_task(self.context(task_idx))
        tested = self._timed_accuracies(self.model, "test")
        for kind, values in self.last_val.items():
            self.result.val_matrix.setdefault(kind, []).append(values)
            self.result.test_matrix.setdefault(kind, []).append(tested[kind])
        self.current = None
        self.next_task = task_idx + 1
        self.on_checkpoint(self.state_dict())

    def _timed_accuracies(self, model: nn.Module, split: str) -> dict[str, list[float]]:
        """Every task's accuracy on `split` (read back if this model state's are held), timed."""
        started = time.perf_counter()
        with self.autocast:
            result = self.evaluations.accuracies(
                model.state_dict(),
                split,
                lambda: accuracies(model, self.tasks, split, self.scenario, self.cfg.eval_batch_size),
            )
        self.result.eval_seconds += time.perf_counter() - started
        return result

    def evaluate(self, task_idx: int, task_step: int, losses: dict[str, float]) -> None:
        """Every task's val accuracies now; keeps a snapshot of the best model of the Score window."""
        self.last_val = self._timed_accuracies(self.model, "val")
        row = {"step": self.global_step, "task": task_idx, "task_step": task_step}
        for kind, values in self.last_val.items():
            row.update({f"val{ROW_PREFIX[kind]}/{t.name}": acc for t, acc in zip(self.tasks, values)})
        row.update({f"loss/{name}": value for name, value in losses.items()})
        if task_idx == len(self.tasks) - 1:
            primary = self.last_val[self.primary]
            mean = sum(primary) / len(primary)
            if self.best is None or mean > self.best[0]:
                self.best = (mean, self.evaluations.state)  # the cache's snapshot of this very state
                self.best_results = self.evaluations.results
        self.rows_logged += 1
        self.on_eval(row)

    def _best_model_test(self) -> dict[str, list[float]]:
        """Test accuracies of the model at the Score's evaluation point (those of a task's end when
        the model did not change from that point to the task's end)."""
        if "test" in self.best_results:
            return {kind: list(values) for kind, values in self.best_results["test"].items()}
        best_model = copy.deepcopy(self.model)
        best_model.load_state_dict(self.best[1])
        return self._timed_accuracies(best_model, "test")

    def state_dict(self) -> dict:
        """Everything needed to continue this sequence exactly (tensors and plain values only)."""
        state = {
            "format": STATE_FORMAT,
            "next_task": self.next_task,
            "global_step": self.global_step,
            "rows_logged": self.rows_logged,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "rng": torch.get_rng_state(),
            "sampler_rng": self.sampler_generator.get_state(),
            "method_rng": self.method_generator.get_state(),
            "result": asdict(self.result),
            "last_val": self.last_val,
            "best": None if self.best is None else {"mean": self.best[0], "model": self.best[1]},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "task": None,
        }
        if self.current is not None:
            run = self.current
            state["task"] = {
                "task_idx": run.task_idx,
                "step": run.step,
                "since": run.since,
                "sums": run.sums,
                "nonfinite": run.nonfinite,
                "sampler_state": run.sampler_state,
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`: the model's head is grown to the size the state holds."""
        if state.get("format") != STATE_FORMAT:
            raise IncompatibleState(
                f"this state was written by cl_bench {state.get('format', '0.1 or older')}, whose settings meant "
                f"something else (before 0.2 each task started a fresh optimiser and EWC's mode=online was today's "
                f"mode=sum); cl_bench {STATE_FORMAT} does not continue it: start a new run folder"
            )
        self.next_task = state["next_task"]
        self.global_step = state["global_step"]
        self.rows_logged = state["rows_logged"]
        grow_head(self.model, state["model"]["head.weight"].shape[0])
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.result = SequenceResult(**state["result"])
        self.last_val = state["last_val"]
        self.best = None if state["best"] is None else (state["best"]["mean"], state["best"]["model"])
        self.best_results = {}
        self.method_generator.set_state(state["method_rng"])
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = build_optimizer(self.cfg.optimizer, self.model.parameters(), self.cfg.lr)
            self.optimizer.load_state_dict(state["optimizer"])
        task = state["task"]
        if task is not None:
            run = self._task_run(task["task_idx"], task["sampler_state"])
            run.step, run.since, run.sums = task["step"], task["since"], task["sums"]
            run.nonfinite = task["nonfinite"].to(self.device)
            self.current = run
        self.sampler_generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["rng"])
