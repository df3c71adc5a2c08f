"""The one training loop every method runs through: tasks in sequence; within a task, parts in sequence (part
0 its main steps, then the method's stages, e.g. a balanced fine-tuning); within a part, steps (step.py), and
at each evaluation or checkpoint point the boundary's work: an evaluation of every task's val split every
`eval_every` steps (and at each task's start and each part's end), a checkpoint every `checkpoint_every` steps.
Each task ends with the accuracy-matrix rows and a checkpoint. Its parts: the settings (settings.py), the step
(step.py), evaluation and the Score's best point (evaluator.py), the saved state's form (trainer_state.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import torch
from torch import Tensor, nn
from tqdm import tqdm

from cl_bench.core.accuracy import ROW_PREFIX
from cl_bench.core.scenario import Scenario
from cl_bench.core.state_format import STATE_FORMAT
from cl_bench.data.task import Task
from cl_bench.engine.device import forward_autocast
from cl_bench.engine.evaluator import Evaluator
from cl_bench.engine.optim import set_lr, steps_on_host
from cl_bench.engine.settings import TrainerSettings
from cl_bench.engine.step import Step, reserved_free
from cl_bench.engine.trainer_state import SavedTask, check_format
from cl_bench.methods.base import Batch, Method, Stage, TrainContext, TrainData, defined_hook
from cl_bench.models.head import grow_head, reset_parameters
from cl_bench.records.sequence_result import SequenceResult

T = TypeVar("T")
MAIN_STEPS = "main steps"  # the name of a task's part 0


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; raised at the next evaluation or checkpoint boundary."""


class StopRequested(RuntimeError):
    """A signal asked the run to stop; its state was checkpointed first."""


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
    """The task being trained, as parts in order: part 0 its main steps, then the method's stages (known once
    the main steps end). `step` counts the task's steps through all parts; `indices` are the batches of the
    part being trained, drawn from `sampler_states[part]`; `sums` the loss terms' running sums over the `since`
    steps since the last evaluation, `nonfinite` whether one of them was NaN or infinite."""

    task_idx: int
    task_weight: float
    parts: list[Stage]
    nonfinite: Tensor
    stages_known: bool = False
    part: int = 0
    sampler_states: dict[int, Tensor] = field(default_factory=dict)
    indices: list[Tensor] = field(default_factory=list)
    step: int = 0
    since: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    @property
    def data(self) -> TrainData:
        return self.parts[self.part].data

    @property
    def start(self) -> int:
        """The task step the part being trained begins after."""
        return sum(part.steps for part in self.parts[: self.part])

    @property
    def end(self) -> int:
        """The task step the part being trained ends at."""
        return self.start + self.parts[self.part].steps

    @property
    def last_part(self) -> bool:
        """Whether the part being trained is the task's last (the stages are known and this is the last)."""
        return self.stages_known and self.part == len(self.parts) - 1


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
            run.part if run is not None else 0,
        )

    def run(self, first_task: Callable[[Trainer], None] | None = None) -> SequenceResult:
        """Train every task not yet done; `first_task`, when given, replaces training task 0
        (the task-A cache: `train_task(0)`, or `import_first_task_state`)."""
        while self.next_task < len(self.tasks):
            task_idx = self.next_task
            if self.current is None and task_idx == 0 and first_task is not None:
                first_task(self)
            else:
                self.train_task(task_idx)
            self.finish_task(task_idx)
        self.result.best_test = self._timed(lambda: self.evaluator.best_test(self.model))
        return self.result

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

    def train_task(self, task_idx: int) -> None:
        """Train task `task_idx` part after part (continuing a resumed task) to the end of its last."""
        run = self.current if self.current is not None else self.start_task(task_idx)
        while True:
            self.train_part(run)
            if run.part == 0:
                self.know_stages(run)  # (a run resumed at the main steps' end took no step to learn them)
            else:
                set_lr(self.optimizer, self.settings.lr_of(task_idx))
            if run.last_part:
                return
            self.begin_part(run, run.part + 1, self.sampler_generator.get_state())

    def start_task(self, task_idx: int) -> TaskRun:
        """Grow the head (or restart the model, for a method that owns "model"), take the task's data, let the
        method prepare (it sees the data in its context), set up the optimiser, draw the main steps' batches;
        evaluate at step 0."""
        grow_head(self.model, self.scenario.n_outputs(task_idx))
        if task_idx > 0 and "model" in self.method.owns:
            reset_parameters(self.model)
            self.optimizer = None
        run = self.current = self.task_run(task_idx)
        self.method.before_task(self.context(task_idx))
        self._task_optimizer(task_idx)
        self.begin_part(run, 0, self.sampler_generator.get_state())
        self.evaluate(task_idx, 0, {})
        return run

    def task_run(self, task_idx: int) -> TaskRun:
        """Task `task_idx` before any part: its data (the method's), its main steps' budget, its task-loss weight."""
        data = self.method.train_data(self.context(task_idx))
        data = TrainData(data.split, data.task_ids.to(self.device))
        steps = self.settings.budget_of(task_idx).steps_for(len(data.split), self.settings.batch_size)
        weight = self.method.task_loss_weight(self.context(task_idx, data))
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        return TaskRun(task_idx, weight, [Stage(MAIN_STEPS, data, steps)], nonfinite)

    def _task_optimizer(self, task_idx: int) -> None:
        """The optimiser of a task that starts: the previous one's state carried over (the head's
        added units with zero state), or a new one; at the task's learning rate."""
        lr, optimizer = self.settings.lr_of(task_idx), self.settings.optimizer
        if self.optimizer is not None and self.settings.optimizer_state == "carry":
            self.optimizer = optimizer.carried(self.optimizer, self.model, lr)
        else:
            self.optimizer = optimizer.new(self.model.parameters(), lr)

    def know_stages(self, run: TaskRun) -> None:
        """The method's stages after the task's main steps, once (asked when the main steps end; a method that
        runs no `stages` has none)."""
        if run.stages_known:
            return
        stages = defined_hook(self.method, "stages")
        run.parts += [] if stages is None else list(stages(self.context(run.task_idx)))
        run.stages_known = True
        self.model.train()

    def begin_part(self, run: TaskRun, part: int, sampler_state: Tensor) -> None:
        """Make part `part` of the task the one being trained: its batches drawn from `sampler_state`, and a
        stage's learning rate (the task's × its factor)."""
        spec = run.parts[part]
        self.sampler_generator.set_state(sampler_state)
        run.indices = list(index_batches(len(spec.data.split), self.settings.batch_size, spec.steps,
                                         self.sampler_generator))
        run.part, run.sampler_states[part] = part, sampler_state
        if part > 0:
            run.parts[part] = Stage(spec.name, TrainData(spec.data.split, spec.data.task_ids.to(self.device)),
                                    spec.steps, spec.lr_factor)
            set_lr(self.optimizer, self.settings.lr_of(run.task_idx) * spec.lr_factor)

    def train_part(self, run: TaskRun) -> None:
        """Train the part of the task `run` is in to its end: step after step, the boundary's work at each
        evaluation and checkpoint point."""
        ctx, step = self.context(run.task_idx), self.step()
        name = self.tasks[run.task_idx].name + ("" if run.part == 0 else f" {run.parts[run.part].name}")
        remaining = run.indices[run.step - run.start :]
        self.model.train()
        with tqdm(total=run.end - run.start, initial=run.step - run.start, desc=f"task {run.task_idx} {name}",
                  disable=None, mininterval=1.0) as progress:  # closed however the part ends
            started = time.perf_counter()
            for index, (x, y) in zip(remaining, run.data.split.batches(remaining)):
                index = index.to(self.device, non_blocking=True)
                step(ctx, Batch(x, y, run.data.task_ids.index_select(0, index), index), run.task_weight, run.sums)
                run.step, run.since, self.global_step = run.step + 1, run.since + 1, self.global_step + 1
                at_eval = run.step % self.settings.eval_every == 0 or run.step == run.end
                every = self.settings.checkpoint_every
                at_checkpoint = bool(every) and self.global_step % every == 0
                if at_eval or at_checkpoint or self.stop_requested:
                    self.result.train_seconds += time.perf_counter() - started
                    progress.update(run.step - run.start - progress.n)
                    self.boundary(run, at_eval, at_checkpoint)
                    started = time.perf_counter()

    def step(self) -> Step:
        """The training step under the current optimiser."""
        return Step(self.method, self.scenario, self.optimizer, self.autocast, self.sum_dtype)

    def boundary(self, run: TaskRun, at_eval: bool, at_checkpoint: bool) -> None:
        """The work between steps at an evaluation or checkpoint point (or on a stop request): the check for a
        non-finite loss, the row of mean losses and the evaluation, the method's stages when the main steps end,
        the checkpoint (but at the task's end: finish_task takes it), the stop."""
        penalty_values = defined_hook(self.method, "penalty_values")
        penalties = {} if penalty_values is None else reserved_free(penalty_values(self.context(run.task_idx)))
        self._check_finite(run, penalties)
        if at_eval:
            self.result.train_steps += run.since
            means = {name: float(value) / run.since for name, value in run.sums.items()}
            if means:  # the penalties at this step's parameters; the total is the row's terms' sum
                means.update({name: float(value) for name, value in penalties.items()})
                means["total"] += sum(means[name] for name in penalties)
            run.sums, run.since = {}, 0
            self.evaluate(run.task_idx, run.step, means)
            self.model.train()
        if run.step == run.end and run.part == 0:
            self.know_stages(run)
        task_ends = run.step == run.end and run.last_part
        if (at_checkpoint and not task_ends) or self.stop_requested:
            self.on_checkpoint(self.state_dict())
        if self.stop_requested:
            raise StopRequested(f"stopped at global step {self.global_step}; state checkpointed")

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
        """Everything needed to continue this sequence exactly (tensors and plain values only; the keys:
        engine/trainer_state.py)."""
        run = self.current
        task = None if run is None else SavedTask(
            run.task_idx, run.step, run.since, run.sums, run.nonfinite, run.sampler_states[0], run.part,
            run.sampler_states.get(run.part) if run.part > 0 else None,
        )
        return {
            "format": STATE_FORMAT,
            "next_task": self.next_task,
            "global_step": self.global_step,
            "rows_logged": self.rows_logged,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "rng": torch.get_rng_state(),
            "sampler_rng": self.sampler_generator.get_state(),
            "method_rng": self.method_generator.get_state(),
            # the CUDA generator's (dropout on the GPU draws from it), on CUDA only
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "result": asdict(self.result),
            **self.evaluator.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "task": None if task is None else task.to_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (a `state_dict`): the model's head is grown to the size the state holds; inside a
        task, its data and batches are those it had, and the method's `resume_task` follows."""
        check_format(state)
        self.next_task, self.global_step = state["next_task"], state["global_step"]
        self.rows_logged = state["rows_logged"]
        grow_head(self.model, state["model"]["head.weight"].shape[0])
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.result = SequenceResult(**state["result"])
        self.evaluator.load_state_dict(state)
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = self.settings.optimizer.new(self.model.parameters(), self.settings.lr)
            self.optimizer.load_state_dict(steps_on_host(state["optimizer"]))
        if state["task"] is not None:
            saved = SavedTask.from_state(state["task"])
            run = self.current = self.task_run(saved.task_idx)
            run.sampler_states[0] = saved.sampler_state.cpu()
            self.method.resume_task(self.context(run.task_idx))
            if saved.stage > 0:  # inside a stage: the method returns its stages again (Method.stages)
                self.know_stages(run)
            sampler_state = saved.stage_sampler_state if saved.stage else saved.sampler_state
            self.begin_part(run, saved.stage, sampler_state.cpu())
            run.step, run.since, run.sums = saved.step, saved.since, saved.sums
            run.nonfinite = saved.nonfinite.to(self.device)
        # The random streams are the CPU's (the same draws on every device): their states go back to the host from
        # wherever the state was loaded (a checkpoint is loaded onto the run's device).
        self.method_generator.set_state(state["method_rng"].cpu())  # after the hooks above, which may draw from it
        self.sampler_generator.set_state(state["sampler_rng"].cpu())
        torch.set_rng_state(state["rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":  # a state saved on the GPU, continued on one
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
