"""The one training loop every method runs through: tasks in sequence, steps within a task (its main
steps, then the method's stages, e.g. a balanced fine-tuning), an evaluation of every task's val split
every `eval_every` steps (and at each task's start, at the end of its main steps and of each stage),
the accuracy-matrix rows at each task's end, and a checkpoint every `checkpoint_every` steps and at
each task's end. Its parts: the settings (settings.py), evaluation and the Score's best point
(evaluator.py), the run's saved state (trainer_state.py)."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import reduce
from typing import TypeVar

import torch
from torch import Tensor, nn
from tqdm import tqdm

from cl_bench.data.task import Task
from cl_bench.engine import trainer_state
from cl_bench.engine.device import forward_autocast
from cl_bench.engine.evaluation import ROW_PREFIX
from cl_bench.engine.evaluator import Evaluator
from cl_bench.engine.optim import set_lr
from cl_bench.engine.scenario import Scenario
from cl_bench.engine.sequence_result import SequenceResult
from cl_bench.engine.settings import TrainerSettings
from cl_bench.engine.trainer_state import STATE_FORMAT, IncompatibleState  # noqa: F401 (imported from here too)
from cl_bench.methods.base import Batch, Method, Stage, TrainContext, TrainData, defined_hook
from cl_bench.models.head import grow_head, reset_parameters

T = TypeVar("T")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; raised at the next evaluation or checkpoint boundary."""


class StopRequested(RuntimeError):
    """A signal asked the run to stop; its state was checkpointed first."""


RESERVED_TERMS = frozenset({"task", "total"})  # the loss terms the trainer logs itself: no method may return one


def reserved_free(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """A method's loss terms, checked for a name the trainer's own terms have."""
    if not RESERVED_TERMS.isdisjoint(terms):
        name = min(RESERVED_TERMS.intersection(terms))
        raise ValueError(f"the method returns a loss term {name!r}; task and total are the trainer's own terms: "
                         f"give the method's term another name")
    return terms


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


@dataclass
class TaskRun:
    """The state of the task being trained: its main steps (stage 0), then the method's stages 1, 2, ...
    `step` counts the task's steps through all of them; `data`, `indices`, `start` and `end` are those of
    the part being trained (its batches, and the task steps it begins after and ends at)."""

    task_idx: int
    steps: int  # the main steps
    data: TrainData
    task_weight: float
    indices: list[Tensor]
    sampler_state: Tensor  # the sampler state the main steps' batches were drawn from
    step: int = 0
    since: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    nonfinite: Tensor | None = None
    stage: int = 0
    stages: list[Stage] | None = None  # known once the main steps end
    stage_sampler_state: Tensor | None = None  # the sampler state the stage's batches were drawn from
    start: int = 0
    end: int = 0

    def __post_init__(self) -> None:
        self.end = self.end or self.steps

    @property
    def last_part(self) -> bool:
        """Whether the part being trained is the task's last (the stages are known and this is the last)."""
        return self.stages is not None and self.stage == len(self.stages)


class Trainer:
    """Trains `model` on `tasks` with `method`; `on_eval(row)` gets every evaluation point,
    `on_checkpoint(state)` every checkpoint (`checkpoint_every` steps, task ends, stop signals)."""

    def __init__(
        self,
        settings: TrainerSettings,
        tasks: list[Task],
        model: nn.Module,
        method: Method,
        scenario: Scenario,
        device: torch.device,
        on_eval: Callable[[dict], None],
        on_checkpoint: Callable[[dict], None] = lambda state: None,
    ):
        self.settings = settings
        self.tasks = tasks
        self.model = model
        self.method = method
        self.scenario = scenario
        self.device = device
        self.autocast = forward_autocast(settings.precision, device)  # reused, never nested
        self.on_eval = on_eval
        self.on_checkpoint = on_checkpoint
        self.sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # loss sums (MPS has no float64)
        self.sampler_generator = torch.Generator().manual_seed(settings.seed)
        self.method_generator = torch.Generator().manual_seed(settings.seed + 1)
        self.evaluator = Evaluator(
            tasks, scenario, settings.eval_batch_size, self.autocast, settings.accuracy, settings.score_window, method
        )
        self.result = SequenceResult()
        self.global_step = 0
        self.rows_logged = 0
        self.next_task = 0
        self.current: TaskRun | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stop_requested = False

    def context(self, task_idx: int, data: TrainData | None = None) -> TrainContext:
        """What the method's hooks see while task `task_idx` is trained: with the data the part being trained
        draws its batches from (`data`, else the current part's) and the part's number."""
        run = self.current if self.current is not None and self.current.task_idx == task_idx else None
        return TrainContext(
            self.model, self.tasks, self.scenario, task_idx, self.device, self.method_generator,
            self.settings.batch_size, data if data is not None or run is None else run.data,
            run.stage if run is not None else 0,
        )

    def run(self, first_task: Callable[[Trainer], None] | None = None) -> SequenceResult:
        """Train every task not yet done; `first_task`, when given, replaces training task 0
        (the task-A cache: `train_first_task`, or `import_first_task_state`)."""
        while self.next_task < len(self.tasks):
            task_idx = self.next_task
            if self.current is None and task_idx == 0 and first_task is not None:
                first_task(self)
            else:
                self.train_task(task_idx)
            self.finish_task(task_idx)
        self.result.best_test = self._timed(lambda: self.evaluator.best_test(self.model))
        return self.result

    def train_first_task(self) -> None:
        """Train task 0 from its start."""
        self.train_task(0)

    def export_first_task_state(self) -> dict:
        """The state after training task 0, without the method's (shared by every method whose first
        task trains as the baseline's)."""
        state = self.state_dict()
        del state["method"]
        return state

    def import_first_task_state(self, state: dict, rows: list[dict]) -> None:
        """Continue as if this trainer had trained task 0 to `state` (an `export_first_task_state`),
        logging its metrics `rows` again; its cost is not counted in this run's figures."""
        self.load_state_dict({**state, "method": self.method.state_dict()})
        self.result = SequenceResult()
        for row in rows:
            self.on_eval(row)

    def start_task(self, task_idx: int) -> TaskRun:
        """Grow the head (or restart the model, for a method that asks), draw the task's data and batches, let
        the method prepare (it sees the data in its context), set up the optimiser; evaluate at step 0."""
        grow_head(self.model, self.scenario.n_outputs(task_idx))
        if task_idx > 0 and self.method.restart_model:
            reset_parameters(self.model)
            self.optimizer = None
        run = self.draw_task(task_idx, self.sampler_generator.get_state())
        self.current = run
        self.method.before_task(self.context(task_idx))
        self._task_optimizer(task_idx)
        self.evaluate(task_idx, 0, {})
        return run

    def _task_optimizer(self, task_idx: int) -> None:
        """The optimiser of a task that starts: the previous one's state carried over (the head's
        added units with zero state), or a new one; at the task's learning rate."""
        lr, optimizer = self.settings.lr_of(task_idx), self.settings.optimizer
        if self.optimizer is not None and self.settings.optimizer_state == "carry":
            self.optimizer = optimizer.carried(self.optimizer, self.model, lr)
        else:
            self.optimizer = optimizer.new(self.model.parameters(), lr)

    def draw_task(self, task_idx: int, sampler_state: Tensor) -> TaskRun:
        """The task's data, budget, task-loss weight and batches (drawn from `sampler_state`)."""
        data = self.method.train_data(self.context(task_idx))
        batch_size = self.settings.batch_size
        steps = self.settings.budget_of(task_idx).steps_for(len(data.split), batch_size)
        self.sampler_generator.set_state(sampler_state)
        indices = list(index_batches(len(data.split), batch_size, steps, self.sampler_generator))
        data = TrainData(data.split, data.task_ids.to(self.device))
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        weight = self.method.task_loss_weight(self.context(task_idx, data))
        return TaskRun(task_idx, steps, data, weight, indices, sampler_state, nonfinite=nonfinite)

    def train_task(self, task_idx: int) -> None:
        """Train task `task_idx` to the end of its budget and of the method's stages (continuing a resumed task)."""
        run = self.current if self.current is not None else self.start_task(task_idx)
        while True:
            ctx = self.context(task_idx)
            self._train_part(run, ctx)
            if run.stage > 0:
                set_lr(self.optimizer, self.settings.lr_of(task_idx))
            if run.stages is None:  # resumed at the main steps' end
                run.stages = self.method_stages(ctx)
            if run.last_part:
                return
            self.begin_stage(run, run.stage + 1, self.sampler_generator.get_state())

    def method_stages(self, ctx: TrainContext) -> list[Stage]:
        """The method's stages of the task (none, without a call, for a method that defines none)."""
        stages = defined_hook(self.method, "stages")
        return [] if stages is None else list(stages(ctx))

    def begin_stage(self, run: TaskRun, stage: int, sampler_state: Tensor) -> None:
        """Make stage `stage` (1, 2, ...) of `run.stages` the part being trained: its data, its batches drawn from
        `sampler_state`, the task steps it spans, and the optimiser at the task's learning rate × its factor."""
        spec = run.stages[stage - 1]
        self.sampler_generator.set_state(sampler_state)
        indices = list(index_batches(len(spec.data.split), self.settings.batch_size, spec.steps, self.sampler_generator))
        run.data = TrainData(spec.data.split, spec.data.task_ids.to(self.device))
        run.indices, run.stage, run.stage_sampler_state = indices, stage, sampler_state
        run.start = run.steps + sum(s.steps for s in run.stages[: stage - 1])
        run.end = run.start + spec.steps
        set_lr(self.optimizer, self.settings.lr_of(run.task_idx) * spec.lr_factor)

    def _train_part(self, run: TaskRun, ctx: TrainContext) -> None:
        """Train the part of the task `run` is in (its main steps or a stage) to its end."""
        task_idx = run.task_idx
        self.model.train()
        every, eval_every = self.settings.checkpoint_every, self.settings.eval_every
        desc = f"task {task_idx} {self.tasks[task_idx].name}"
        if run.stage > 0:
            desc += f" {run.stages[run.stage - 1].name}"
        remaining = run.indices[run.step - run.start :]
        optimizer, task_weight, model = self.optimizer, run.task_weight, self.model
        after_backward, after_step = defined_hook(self.method, "after_backward"), defined_hook(self.method, "after_step")
        penalty_values = defined_hook(self.method, "penalty_values")
        started = time.perf_counter()
        with tqdm(
            total=run.end - run.start, initial=run.step - run.start, desc=desc,
            disable=None, mininterval=1.0,
        ) as progress:  # closed however the part ends
            for index, (x, y) in zip(remaining, run.data.split.batches(remaining)):
                index = index.to(self.device, non_blocking=True)
                batch = self.method.extend_batch(ctx, Batch(x, y, run.data.task_ids.index_select(0, index), index))
                with self.autocast:
                    logits = model(batch.x)
                    task_loss = self._task_loss(logits, batch, len(y))
                    terms = {"task": task_loss if task_weight == 1 else task_weight * task_loss,
                             **reserved_free(self.method.loss_terms(ctx, batch, logits))}
                loss = reduce(operator.add, terms.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if after_backward is not None:
                    after_backward(ctx, model)
                optimizer.step()
                if after_step is not None:
                    after_step(ctx, model)
                terms["total"] = loss
                for name, value in terms.items():  # running sums on the device, read at evaluation
                    run.sums[name] = run.sums[name] + value.detach() if name in run.sums else value.detach().to(self.sum_dtype)
                run.step += 1
                run.since += 1
                self.global_step += 1
                at_eval = run.step % eval_every == 0 or run.step == run.end
                at_checkpoint = bool(every) and self.global_step % every == 0
                if at_eval or at_checkpoint or self.stop_requested:
                    self.result.train_seconds += time.perf_counter() - started
                    progress.update(run.step - run.start - progress.n)
                    penalties = {} if penalty_values is None else reserved_free(penalty_values(ctx))
                    self._check_finite(run, penalties)
                    if at_eval:
                        self.result.train_steps += run.since
                        means = {name: float(value) / run.since for name, value in run.sums.items()}
                        if means:  # the penalties at this step's parameters; the total is the row's terms' sum
                            means.update({name: float(value) for name, value in penalties.items()})
                            means["total"] += sum(means[name] for name in penalties)
                        run.sums, run.since = {}, 0
                        self.evaluate(task_idx, run.step, means)
                        self.model.train()
                    if run.step == run.end and run.stages is None:  # the main steps' end: the stages that follow
                        run.stages = self.method_stages(ctx)
                        self.model.train()
                    task_ends = run.step == run.end and run.last_part  # finish_task checkpoints it
                    if (at_checkpoint and not task_ends) or self.stop_requested:
                        self.on_checkpoint(self.state_dict())
                    if self.stop_requested:
                        raise StopRequested(f"stopped at global step {self.global_step}; state checkpointed")
                    started = time.perf_counter()

    def _task_loss(self, logits: Tensor, batch: Batch, n_own: int) -> Tensor:
        """Mean cross-entropy of the task's own examples: the batch's first `n_own` (a method that
        extends the batch, such as replay, adds its examples after them and weighs them itself)."""
        if len(batch.y) == n_own:
            return self.scenario.loss(logits, batch.y, batch.task_ids)
        return self.scenario.loss(logits[:n_own], batch.y[:n_own], batch.task_ids[:n_own])

    def _check_finite(self, run: TaskRun, penalties: dict[str, Tensor]) -> None:
        """Raise if a step's loss was NaN or infinite since the last evaluation, or a closed-form penalty is
        at this boundary. The running sum of the total loss is non-finite exactly when a step's was (in
        float64 finite float32 losses cannot overflow it), so steps do no check of their own: one host sync
        per boundary. A non-finite penalty gradient between boundaries leaves non-finite parameters, which
        make every later step's loss, and the penalty at the boundary, non-finite too."""
        if "total" in run.sums:
            run.nonfinite |= ~torch.isfinite(run.sums["total"])
        for value in penalties.values():
            run.nonfinite |= ~torch.isfinite(value)
        if bool(run.nonfinite):
            first = self.global_step - run.since + 1
            raise NonFiniteLoss(
                f"the loss became NaN or infinite between global steps {first} and {self.global_step} "
                f"(task {run.task_idx}); lower lr, check the inputs, or the method's weights"
            )

    def finish_task(self, task_idx: int) -> None:
        """After-task hook, accuracy-matrix rows, and a checkpoint of the finished task."""
        self.method.after_task(self.context(task_idx))
        tested = self._timed(lambda: self.evaluator.test(self.model))
        for kind, values in self.evaluator.last_val.items():
            self.result.val_matrix.setdefault(kind, []).append(values)
            self.result.test_matrix.setdefault(kind, []).append(tested[kind])
        self.current = None
        self.next_task = task_idx + 1
        self.on_checkpoint(self.state_dict())

    def evaluate(self, task_idx: int, task_step: int, losses: dict[str, float]) -> None:
        """Every task's val accuracies now, logged as a metrics row with the mean `losses`."""
        val = self._timed(lambda: self.evaluator.val(self.model, task_idx, task_step))
        row = {"step": self.global_step, "task": task_idx, "task_step": task_step}
        for kind, values in val.items():
            row.update({f"val{ROW_PREFIX[kind]}/{t.name}": acc for t, acc in zip(self.tasks, values)})
        row.update({f"loss/{name}": value for name, value in losses.items()})
        self.rows_logged += 1
        self.on_eval(row)

    def _timed(self, evaluate: Callable[[], T]) -> T:
        """`evaluate()`, its time counted as evaluation time."""
        started = time.perf_counter()
        result = evaluate()
        self.result.eval_seconds += time.perf_counter() - started
        return result

    def state_dict(self) -> dict:
        """Everything needed to continue this sequence exactly (tensors and plain values only)."""
        return trainer_state.capture(self)

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`."""
        trainer_state.restore(self, state)
