"""The method interface: hooks the trainer calls around every task and at every step.

A step runs: `extend_batch` → forward → `loss_terms` → backward → `after_backward` → optimiser step →
`after_step`. Where the trainer logs a row or checks for a non-finite loss, `penalty_values`; at evaluation,
`predictor`. Every hook takes what it needs from its `TrainContext`. A method declares what it owns of a run
(`owns`: the training data, the examples added to a batch, the prediction, the stages after a task's main
steps, a new model per task, the model's output layer), of which a run has one: at most one part of a
combination (methods/compose.py) owns each. When methods are combined, their `after_backward` gradient edits run
closed-form penalty gradients first, projections (A-GEM's) last (`gradient_edit_order`), so a projection sees the
gradient that the optimiser will take. A method that trains a model of its own (DGR's generator) keeps it as an
`OwnModel`: in the method's state, on the run's device, its random draws from `ctx.generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cl_bench.core.scenario import SCENARIOS, Scenario
from cl_bench.data.task import Split, Task

# What a method may own of a run (`Method.owns`), each with the hooks that make it and what it means.
OWNABLE = {
    "train_data": (("train_data",), "chooses the training data"),
    "batch": (("extend_batch",), "adds examples to each batch"),
    "prediction": (("predictor", "prediction_state"), "replaces the prediction at evaluation"),
    "stages": (("stages",), "adds training stages after a task's main steps"),
    "model": ((), "restarts the model at every task"),
    "head": (("head",), "replaces the model's output layer"),
}
# Hooks the trainer calls only for a method that runs them (`Method.runs`): a step pays for no call it does not need.
OPTIONAL_HOOKS = ("after_backward", "after_step", "penalty_values", "predictor", "stages")


@dataclass
class Batch:
    """A training batch: inputs, local labels, the task of each example, and (for examples of the
    task being trained) their index in its training split, -1 for examples a method added."""

    x: Tensor
    y: Tensor
    task_ids: Tensor
    index: Tensor


@dataclass
class TrainData:
    """The split a task is trained on and the task of each of its examples."""

    split: Split
    task_ids: Tensor


@dataclass
class TrainContext:
    """What a method may read: the model, the task sequence, the scenario and where we are. While a task is
    trained, `data` is the data its batches are drawn from (what `Batch.index` indexes: the training data of
    the method that owns it, e.g. joint training's union; a stage's own data in a stage) and `part` which
    part of the task is trained (0: its main steps, k: the method's stage k)."""

    model: nn.Module
    tasks: list[Task]
    scenario: Scenario
    task_idx: int
    device: torch.device
    generator: torch.Generator
    batch_size: int
    data: TrainData | None = None
    part: int = 0


class Method:
    """Cross-entropy on the current task's data and nothing else; methods override the hooks.

    Loss terms returned by `loss_terms` are already weighted (e.g. λ·L_EWC); the trainer adds them
    to the task loss and logs each one under its name. A method whose first task trains exactly as
    the baseline's (every method here) shares the cached task-A model; one that does not sets
    `changes_first_task`.
    """

    changes_first_task = False
    # Parameters (config names) a report may select the best value of by validation, e.g. EWC's
    # λ; runs that differ only in these and the seed share a row of the Score table.
    selectable: tuple[str, ...] = ()
    # What the method owns of a run (OWNABLE's keys): a method overriding `train_data` owns "train_data", one
    # overriding `extend_batch` "batch", `predictor` "prediction", `stages` "stages"; "model": at every task after
    # the first the trainer re-initialises the model and starts a new optimiser before `before_task` (a fresh
    # model per task, e.g. the tutorial's multi-task model).
    owns: frozenset[str] = frozenset()
    # Where this method's `after_backward` runs when several methods edit the gradient (methods/compose.py):
    # 0 adds gradient terms (closed-form penalty gradients), 1 projects the gradient (A-GEM), so that a
    # projection sees the gradient the optimiser will take.
    gradient_edit_order = 0
    # The keys of `state_dict()` whose tensors the method keeps on the host on purpose, whatever the run's device
    # (e.g. indices into a task's split, which the split gathers on its own device); every other tensor of its
    # state is on the run's device (tests/gpu_ready/test_device_audit.py checks both).
    host_state: tuple[str, ...] = ()
    # The scenarios (core/scenario.py) the method is defined in; a run in another is refused before
    # anything is built (methods/build.py), e.g. iCaRL's nearest-mean classifier outside class-IL.
    scenarios: tuple[str, ...] = SCENARIOS

    def runs(self, hook: str) -> bool:
        """Whether the trainer calls the optional hook `hook` (OPTIONAL_HOOKS) of this method: by default, when
        its class overrides `Method`'s."""
        return getattr(type(self), hook) is not getattr(Method, hook)

    def train_data(self, ctx: TrainContext) -> TrainData:
        """The data the current task is trained on: by default its own training split (a method that owns
        "train_data" returns its own)."""
        return task_split(ctx.tasks, ctx.task_idx)

    def check(self, tasks: list[Task]) -> None:
        """Raise ConfigError, before any training, if the method's settings cannot work with `tasks`
        (rules that need no data are the constructor's, written with methods/params.py)."""

    def before_task(self, ctx: TrainContext) -> None:
        """Called after the head has grown for the task, before its first step (`ctx.data` is the task's data)."""

    def resume_task(self, ctx: TrainContext) -> None:
        """Called instead of `before_task` when a run continues inside a task from a checkpoint (the method's state
        is the checkpoint's), before its next step."""

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """The weight of the cross-entropy on the task's own examples (1: a plain sum of terms;
        van de Ven & Tolias weigh it 1/t over t tasks so far when distilling or replaying)."""
        return 1.0

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        """Add examples after the batch's own (replay); the default adds none. The trainer's "task"
        term covers only the batch's own examples: a method that adds some gives them a term of its own."""
        return batch

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """Extra weighted loss terms for this step, by name."""
        return {}

    def after_backward(self, ctx: TrainContext) -> None:
        """After backward, before the optimiser step: may read and edit `ctx.model`'s parameters' `.grad` in
        place. Called only if the method runs it (`runs`)."""

    def after_step(self, ctx: TrainContext) -> None:
        """After the optimiser step (e.g. a path integral over the update). Called only if the method runs it
        (`runs`)."""

    def penalty_values(self, ctx: TrainContext) -> dict[str, Tensor]:
        """The values, at the current parameters and without a graph, of the penalties whose gradient
        `after_backward` adds in closed form (EWC's, L2's, SI's, MAS's), already weighted, by name. A step
        computes none of them: the trainer asks for them only where it logs a row (`loss/<name>`, the value
        at that step's parameters) or checks for a non-finite loss. Called only if the method runs it (`runs`)."""
        return {}

    def prediction_state(self) -> dict[str, Tensor]:
        """Tensors besides the model's weights that `predictor` depends on (e.g. iCaRL's exemplars): the
        evaluation cache and the Score's best-point snapshot key on them too."""
        return {}

    def predictor(self, model: nn.Module, state: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """The function from a batch of inputs to one score per output unit, whose argmax is the prediction at
        evaluation, for a `prediction_state()` snapshot `state`: by default the model's logits. Called once
        per evaluation, and only if the method runs it (`runs`)."""
        return model

    def head(self, linear: nn.Linear) -> nn.Module:
        """The output layer the method trains and predicts with, made from the model's linear `head` when the run
        builds the model, before any weights are loaded (a method that owns "head": ER-ACE's and LUCIR's cosine
        classifier, models/cosine_head.py); by default that head."""
        return linear

    def after_task(self, ctx: TrainContext) -> None:
        """Called when the task's training budget is spent."""

    def state_dict(self) -> dict:
        """Tensors and plain values that restore the method's state (checkpoint-safe types only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but the checkpoint holds {sorted(state)}")

    def stages(self, ctx: TrainContext) -> list[Stage]:
        """Stages of further training after the task's main steps, run in order within the task (e.g. End-to-End
        Incremental Learning's balanced fine-tuning): each its own data, number of steps and learning-rate factor;
        none by default. Their steps continue the task's step count, evaluation and checkpoints, and the step's hooks
        run in them as in the main steps; `after_task` follows the last.

        Called when the main steps end (the model is then theirs), and again when a run resumes inside a stage: it
        must then return the same stages, so a method that computes them from the model or with `ctx.generator`
        keeps what it computed in its state. A method's step hooks may take this call as "the main steps ended".
        Called only if the method runs it (`runs`)."""
        return []


class OwnModel:
    """A model a method trains besides the run's, with its own optimiser (DGR's generator): part of the method's state
    (the method puts `state_dict()` in its own), on the run's device, its initial weights drawn from `ctx.generator`.

    `build(ctx)` makes the module and `optimizer(parameters)` its optimiser. The method calls `ready(ctx)` in the
    hooks that start or continue a task (`before_task`, `resume_task`) before it trains or samples the module: the
    first call of a fresh run builds it on `ctx.device` from a seed drawn from `ctx.generator` (so the global random
    stream, which the run's model draws from, is untouched); after `load_state_dict` (a resumed run) it builds the
    module without a draw and loads the checkpoint's weights and optimiser state into it. The method's own random
    draws (samples, noise) come from `ctx.generator` too: its state is checkpointed, so a resumed run draws the same."""

    def __init__(self, build: Callable[[TrainContext], nn.Module],
                 optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]):
        self.build = build
        self.make_optimizer = optimizer
        self.module: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.loaded: dict | None = None  # a checkpoint's state, until `ready` builds the module

    def ready(self, ctx: TrainContext) -> nn.Module:
        """The module, built on `ctx.device` the first time (from the loaded state after a resume)."""
        if self.module is None:
            seed = None if self.loaded is not None else int(torch.randint(2**62, (), generator=ctx.generator))
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                module = self.build(ctx).to(ctx.device)
            optimizer = self.make_optimizer(list(module.parameters()))
            if self.loaded is not None:
                module.load_state_dict(self.loaded["module"])
                optimizer.load_state_dict(self.loaded["optimizer"])
            self.module, self.optimizer, self.loaded = module, optimizer, None
        return self.module

    def step(self, loss: Tensor) -> None:
        """One optimiser step of the module on `loss`."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def state_dict(self) -> dict | None:
        """The module's weights and the optimiser's state (None before the module is built)."""
        if self.module is None:
            return self.loaded
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        self.module, self.optimizer, self.loaded = None, None, state


@dataclass
class Stage:
    """A stage of a task after its main steps (`Method.stages`): `steps` steps on `data`, at the task's learning
    rate × `lr_factor`; `name` says what it is in the progress bar."""

    name: str
    data: TrainData
    steps: int
    lr_factor: float = 1.0


def check_ownership(method: Method) -> None:
    """TypeError unless `method` owns (`owns`) exactly what its class's hooks make it own (OWNABLE): ownership is
    declared, and what is declared is done."""
    for owned, (hooks, _) in OWNABLE.items():
        overridden = [hook for hook in hooks if getattr(type(method), hook) is not getattr(Method, hook)]
        name = type(method).__name__
        if overridden and owned not in method.owns:
            raise TypeError(f"{name} overrides {overridden[0]} but does not declare owns={{{owned!r}}}")
        if hooks and owned in method.owns and not overridden:
            raise TypeError(f"{name} declares owns={{{owned!r}}} but overrides none of {', '.join(hooks)}")
    if "head" in method.owns and not method.changes_first_task:
        raise TypeError(f"{name} replaces the model's output layer: its first task is not the baseline's cached one "
                        f"(set changes_first_task)")


def task_split(tasks: list[Task], task_idx: int) -> TrainData:
    """Task `task_idx`'s own training split, every example of that task."""
    split = tasks[task_idx].train
    return TrainData(split, torch.full((len(split),), task_idx, dtype=torch.long))


def defined_hook(method: Method, name: str) -> Callable | None:
    """`method`'s bound optional hook `name` (OPTIONAL_HOOKS) if it runs it, else None: the trainer decides once,
    so a hook a method does not run costs no call."""
    return getattr(method, name) if method.runs(name) else None
