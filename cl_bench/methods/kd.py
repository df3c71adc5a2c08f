"""Knowledge distillation (Hinton et al. 2015) as Learning without Forgetting (Li & Hoiem 2017; the
two-cities post's L_B + κ·L_KD)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.core.fewer_ops import columns, mean, sum_of
from cl_bench.data.task import Split
from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.params import choice, flag, number
from cl_bench.models.head import head_like

TEACHER_MODES = ("auto", "recorded", "live")
WEIGHTINGS = ("sum", "tasks_seen")
REDUCTIONS = ("sum", "mean_over_groups", "mean")
STUDENT_UNITS = ("old", "all")
STATE_KEYS = {"teacher", "recorded", "recorded_task"}
# Examples per teacher forward pass when recording a task's outputs (inference only).
RECORD_BATCH_SIZE = 1024


def distillation_losses(
    student: Tensor, teacher: Tensor, groups: list[slice], T: float, reduction: str = "sum"
) -> Tensor:
    """Per-example H(softmax(teacher/T), softmax(student/T)) = −Σ_j softmax(z_old/T)_j · log softmax(z/T)_j
    on each group's units, summed over the groups (`reduction="sum"`); averaged over the groups
    (`"mean_over_groups"`, van de Ven & Tolias's code since 2019); or averaged over the groups and over
    each group's units (`"mean"`, their 2018 code)."""
    return distillation_from_targets(student, target_probabilities(teacher, groups, T), groups, T, reduction)


def equal_groups(groups: list[slice]) -> tuple[slice, int] | None:
    """(the units they span, their number) when there are several groups of equal size, each starting where
    the one before ends (task-IL's old heads): one [N, groups, units] tensor then holds them all."""
    if len(groups) < 2 or any(g.step not in (None, 1) for g in groups):
        return None
    size = groups[0].stop - groups[0].start
    if any(g.stop - g.start != size or g.start != groups[0].start + i * size for i, g in enumerate(groups)):
        return None
    return slice(groups[0].start, groups[-1].stop), len(groups)


def target_probabilities(teacher: Tensor, groups: list[slice], T: float) -> Tensor:
    """softmax(z_old/T) within each group, in the teacher's columns (columns outside every group are left
    as they are, never read): the distillation targets. Equal groups take one batched softmax."""
    layout = equal_groups(groups)
    if layout is not None:
        span, n = layout
        probabilities = F.softmax(columns(teacher, span).unflatten(1, (n, -1)) / T, dim=2).flatten(1)
        if span.start == 0 and span.stop == teacher.shape[1]:
            return probabilities
        targets = teacher.clone()
        targets[:, span] = probabilities
        return targets
    if len(groups) == 1 and columns(teacher, groups[0]) is teacher:
        return F.softmax(teacher / T, dim=1)
    targets = teacher.clone()
    for units in groups:
        targets[:, units] = F.softmax(teacher[:, units] / T, dim=1)
    return targets


def distillation_from_targets(
    student: Tensor, targets: Tensor, groups: list[slice], T: float, reduction: str = "sum"
) -> Tensor:
    """`distillation_losses` from the targets `target_probabilities` made: the old-task groups' log-softmax
    as one batched op when they have equal sizes, else one group at a time."""
    layout = equal_groups(groups)
    if layout is not None:
        span, n = layout
        log_p = F.log_softmax(columns(student, span).unflatten(1, (n, -1)) / T, dim=2)
        terms = -(columns(targets, span).unflatten(1, (n, -1)) * log_p)
        total = (terms.mean(2) if reduction == "mean" else terms.sum(2)).sum(1)
    else:

        def cross_entropy(units: slice) -> Tensor:
            terms = -(columns(targets, units) * F.log_softmax(columns(student, units) / T, dim=1))
            return terms.mean(1) if reduction == "mean" else terms.sum(1)

        total = sum_of(cross_entropy(units) for units in groups)
        if total is None:
            return student.new_zeros(len(student))
    return total if reduction == "sum" else total / len(groups)


def old_model_state(model: nn.Module, n_old_units: int) -> dict[str, Tensor]:
    """`model`'s state with the head cut back to its first `n_old_units` rows (the units it had
    when the previous task ended)."""
    state = dict(model.state_dict())
    for key in ("head.weight", "head.bias"):
        if key in state:
            state[key] = state[key][:n_old_units]
    return state


def build_teacher(model: nn.Module, state: dict[str, Tensor], device: torch.device) -> nn.Module:
    """A frozen, eval-mode copy of `model`'s architecture holding `state`, whose head may be smaller;
    the global random stream is left untouched (the head is made without initialisation)."""
    teacher = copy.deepcopy(model)
    teacher.head = head_like(model.head, state["head.weight"].shape[0], initialise=False)
    teacher.load_state_dict(state)
    for parameter in teacher.parameters():
        parameter.grad = None
    return teacher.to(device).eval().requires_grad_(False)


class LazyTeacher:
    """A frozen teacher (`build_teacher`) as a method keeps it: checkpointed as its state dict, and after a load
    (a resume inside a task) rebuilt from that state, with the run's model's architecture, at first use."""

    def __init__(self, method: str):
        self.method = method  # named in the error when there is no teacher
        self.module: nn.Module | None = None
        self.state: dict[str, Tensor] | None = None  # a loaded checkpoint's, until the module is rebuilt

    def build(self, model: nn.Module, state: dict[str, Tensor], device: torch.device) -> nn.Module:
        """A teacher of `model`'s architecture holding `state`, now."""
        self.module, self.state = build_teacher(model, state, device), None
        return self.module

    def clear(self) -> None:
        self.module, self.state = None, None

    def __call__(self, ctx: TrainContext) -> nn.Module:
        """The teacher, rebuilt from a loaded state on first use."""
        if self.module is None:
            if self.state is None:
                raise RuntimeError(f"{self.method} has no teacher for task {ctx.task_idx}: before_task was not called")
            self.module = build_teacher(ctx.model, self.state, ctx.device)
        return self.module

    def state_dict(self) -> dict[str, Tensor] | None:
        """The teacher's weights (None without a teacher)."""
        state = self.module.state_dict() if self.module is not None else self.state
        return None if state is None else dict(state)

    def load_state_dict(self, state: dict[str, Tensor] | None) -> None:
        self.module, self.state = None, state


def record_outputs(teacher: nn.Module, split: Split) -> Tensor:
    """The teacher's logits on every example of `split`, in split order (LwF's Y_o)."""
    with torch.inference_mode():
        chunks = [teacher(x) for x, _ in split.eval_batches(RECORD_BATCH_SIZE)]
    return torch.cat(chunks)


class KD(Method):
    """Learning without Forgetting (Li & Hoiem 2017): L(θ) = L_task(θ) + κ·L_KD(θ), the two-cities post's
    L_B + κ·L_KD (Li & Hoiem's L_new + λ_o·L_old), L_KD distilling the previous model's old-task outputs
    at temperature T (Hinton et al. 2015).

    The teacher is the model as it was when the previous task ended: a frozen copy taken in
    `before_task` whose head keeps only the rows that existed then. For each group of old units
    that one softmax normalises (`scenario.old_output_groups`: class-IL all old classes jointly,
    task-IL each old task's head separately, domain-IL the shared head),

        L_KD = Σ_groups mean_batch −Σ_j softmax(z_old/T)_j · log softmax(z/T)_j,

    the teacher's (recorded) probabilities being the target, as in Li & Hoiem's
    L_old(y_o, ŷ_o) = −Σ y'_o log ŷ'_o. The two-cities post writes the cross-entropy with the current and the
    old outputs the other way round; this follows Li & Hoiem. `t_squared` multiplies by T² (Hinton
    et al.'s scaling, which keeps gradient sizes comparable across temperatures). `reduction=mean`
    averages over the groups and over each group's units instead of summing (van de Ven & Tolias's
    2018 code), `reduction=mean_over_groups` over the groups only (their code since 2019).
    `weighting=tasks_seen` gives (1/t)·L_task + (1 − 1/t)·κ·L_KD over the t tasks seen so far (van de
    Ven & Tolias), where `sum` gives L_task + κ·L_KD. In class-IL, `student_units=all` takes the student's softmax
    over every unit the head has now, the teacher's probabilities padded with 0 for the units added since (van de
    Ven & Tolias's code), where `old` (Li & Hoiem) takes it over the old units only; in task- and domain-IL the two
    are the same.

    `teacher`: "recorded" runs the teacher once in `before_task` over the data the task's batches are
    drawn from (`ctx.data`: the task's training split, or the union of a method that owns the training
    data, e.g. joint training) and looks its logits up by `batch.index` (LwF's "record Y_o"; every example
    must come from that data); "live" runs the teacher on each batch (needed when augmentation changes the
    inputs) and distils only the examples with index ≥ 0; "auto" records when the data is deterministic. A
    method's stage after the main steps (End-to-End's balanced fine-tuning) draws from other data: there the
    teacher runs live.

    Checkpoints hold the teacher's state dict and the recorded logits. After `load_state_dict` the
    teacher is rebuilt lazily from `ctx.model`'s architecture at the next step that needs it (a
    resume inside a task); a resume at a task boundary takes a fresh teacher in `before_task`.
    """

    selectable = ("kappa", "T")

    def __init__(
        self,
        kappa: float = 1.0,
        T: float = 2.0,
        t_squared: bool = False,
        teacher: str = "auto",
        weighting: str = "sum",
        reduction: str = "sum",
        student_units: str = "old",
    ):
        self.kappa = number("kappa", kappa, "≥ 0", lambda v: v >= 0)
        self.T = number("T", T, "> 0", lambda v: v > 0)
        self.t_squared = flag("t_squared", t_squared)
        self.teacher_mode = choice("teacher", teacher, TEACHER_MODES)
        self.weighting = choice("weighting", weighting, WEIGHTINGS)
        self.reduction = choice("reduction", reduction, REDUCTIONS)
        self.student_units = choice("student_units", student_units, STUDENT_UNITS)
        self.teacher = LazyTeacher("KD")
        self.recorded: Tensor | None = None
        self.recorded_task = -1
        self._recorded_targets: Tensor | None = None  # softmax(recorded/T) per group, made at the task's first step

    @property
    def active(self) -> bool:
        return self.kappa > 0

    def before_task(self, ctx: TrainContext) -> None:
        """Snapshot the teacher (tasks after the first) and record its outputs if so configured."""
        self.teacher.clear()
        self.recorded, self.recorded_task, self._recorded_targets = None, -1, None
        if ctx.task_idx == 0 or not self.active:
            return
        n_old = ctx.scenario.units_existing_before(ctx.task_idx)
        teacher = self.teacher.build(ctx.model, old_model_state(ctx.model, n_old), ctx.device)
        split = ctx.data.split  # what the batches index: the task's split, or a data owner's (joint training)
        if self.teacher_mode == "recorded" or (self.teacher_mode == "auto" and split.deterministic):
            self.recorded = record_outputs(teacher, split)
            self.recorded_task = ctx.task_idx

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """1, or 1/t over the t tasks seen so far (`weighting=tasks_seen`)."""
        return 1 / (ctx.task_idx + 1) if self.weighting == "tasks_seen" else 1.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """κ·L_KD (×T² with `t_squared`, ×(1 − 1/t) with `weighting=tasks_seen`), L_KD the mean over the
        batch's examples of the task's split."""
        if ctx.task_idx == 0 or not self.active:
            return {}
        groups = ctx.scenario.old_output_groups(ctx.task_idx)
        targets, weight = self._targets(ctx, batch, groups)
        if self.student_units == "all" and ctx.scenario.name == "class":
            n_old = groups[0].stop  # class-IL's one group: the old classes, units 0 .. n_old - 1
            targets = F.pad(targets[:, :n_old], (0, logits.shape[1] - n_old))  # the new units' targets are 0
            groups = [slice(0, logits.shape[1])]
        loss = mean(distillation_from_targets(logits, targets, groups, self.T, self.reduction), weight)
        scale = self.kappa * self.T**2 if self.t_squared else self.kappa
        if self.weighting == "tasks_seen":
            scale *= 1 - self.task_loss_weight(ctx)
        return {"kd": scale * loss}

    def _targets(self, ctx: TrainContext, batch: Batch, groups: list[slice]) -> tuple[Tensor, Tensor | None]:
        """The teacher's old-unit probabilities softmax(z_old/T) per group for every example of the batch, and
        each example's weight (1 for examples of the task's split, 0 for examples a method added; None when
        recorded outputs are used, which requires every example to be the split's own); no host sync.
        Recorded outputs are turned into probabilities once per task and gathered once per step."""
        own = batch.index >= 0
        if self.recorded_task == ctx.task_idx and ctx.part == 0:
            torch._assert_async(
                own.all(),
                "KD with recorded teacher outputs got examples with index -1 (added to the batch by another "
                "mechanism); their teacher outputs were never recorded: use method.teacher=live",
            )
            if self._recorded_targets is None:
                self.recorded = self.recorded.to(ctx.device)
                self._recorded_targets = target_probabilities(self.recorded, groups, self.T)
            return self._recorded_targets.index_select(0, batch.index), None
        with torch.inference_mode():
            old = self.teacher(ctx)(batch.x)
        return target_probabilities(old, groups, self.T), own.float()

    def state_dict(self) -> dict:
        state: dict = {}
        teacher_state = self.teacher.state_dict()
        if teacher_state is not None:
            state["teacher"] = teacher_state
        if self.recorded is not None:
            state["recorded"] = self.recorded
            state["recorded_task"] = self.recorded_task
        return state

    def load_state_dict(self, state: dict) -> None:
        """Keep the teacher's state for a lazy rebuild and the recorded logits."""
        unknown = set(state) - STATE_KEYS
        if unknown:
            raise ValueError(f"KD checkpoint state has unknown keys {sorted(unknown)}")
        self.teacher.load_state_dict(state.get("teacher"))
        self.recorded = state.get("recorded")
        self.recorded_task = state.get("recorded_task", -1)
        self._recorded_targets = None
