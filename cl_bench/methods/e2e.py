"""End-to-End Incremental Learning (Castro, Marín-Jiménez, Guil, Schmid & Alahari 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cl_bench.data.task import Task, TensorSplit
from cl_bench.methods.base import Batch, Method, Stage, TrainContext, TrainData
from cl_bench.methods.kd import LazyTeacher, distillation_losses, old_model_state
from cl_bench.methods.params import number
from cl_bench.methods.replay import Replay, herding, labels_and_features, with_memory

STATE_KEYS = {"memory", "teacher", "stage_teacher", "balanced_index", "balanced_task"}


class E2E(Method):
    """Castro et al.'s End-to-End Incremental Learning, class-IL: at every task after the first,

    1. training on the task's data and the exemplar memory together with the cross-distilled loss
           L(θ) = L_C(θ) + Σ_{f<t} L_D_f(θ),
       L_C the cross-entropy over every class seen so far (the trainer's "task" term), L_D_f Hinton et al.'s
       distillation on the logits of old task f, L_D_f = mean_batch −Σ_{j∈f} softmax(z_old/T)_j · log softmax(z/T)_j
       (softmax within task f's units; "distill"), the teacher z_old the model as the previous task ended, run on
       every example of the batch (the task's and the exemplars);
    2. balanced fine-tuning (a stage of the task, `Method.stages`): `balanced_epochs` epochs at the learning rate
       × `lr_factor` (Castro: 10× smaller) on the memory's exemplars of the old classes plus as many examples of
       each new class, chosen by herding on the features of the model at the end of step 1 (Castro: "the most
       representative samples ... according to the selection algorithm" of the memory). Its loss is step 1's plus
       their temporary distillation on the new classes' logits, the model at the end of step 1 the teacher
       ("distill_new");
    3. the memory update: each new class gets ⌊memory_size / n⌋ exemplars by herding (Rebuffi et al. 2017) over the
       n classes seen so far and the old classes keep the first ⌊memory_size / n⌋ of theirs (methods/replay.py).

    The first task trains with the cross-entropy only, as the baseline's (it shares the cached task A), and has no
    fine-tuning; its classes then enter the memory. "As many examples per class" is the old classes' share before
    the update, ⌊memory_size / n_old⌋ (a class with fewer examples gives them all). Castro's data augmentation
    (brightness, contrast, random crops, mirroring) and gradient noise are left out, and the optimiser and its
    learning rate are the run's: a fixed step budget with the stage's factor rather than their schedule of epochs
    with divisions by 10. Defined in class-IL only: its premise is one head over all classes seen, in which the new
    classes' many examples bias the old ones' logits; in task-IL no class competes with another task's.
    """

    scenarios = ("class",)
    selectable = ("memory_size",)
    owns = frozenset({"train_data", "stages"})
    host_state = ("balanced_index",)  # rows of the task's training split, drawn from the host-side labels

    def __init__(self, memory_size: int = 200, T: float = 2.0, balanced_epochs: float = 30.0, lr_factor: float = 0.1):
        self.memory = Replay(memory_size, selection="herding")  # the exemplars and their update rule
        self.T = number("T", T, "> 0", lambda v: v > 0)
        self.balanced_epochs = number("balanced_epochs", balanced_epochs, "≥ 0", lambda v: v >= 0)
        self.lr_factor = number("lr_factor", lr_factor, "> 0", lambda v: v > 0)
        self.teacher = LazyTeacher("E2E")  # the model as the previous task ended (its units)
        self.stage_teacher = LazyTeacher("E2E")  # the model at the end of step 1
        self.balanced_index: Tensor | None = None  # the new classes' rows of the task's split in the balanced set
        self.balanced_task = -1  # the task whose balanced fine-tuning was chosen (then running)

    def check(self, tasks: list[Task]) -> None:
        self.memory.check(tasks)

    def train_data(self, ctx: TrainContext) -> TrainData:
        """The task's training split followed by the memory's exemplars."""
        return with_memory(super().train_data(ctx), self.memory.memory, ctx.task_idx)

    def before_task(self, ctx: TrainContext) -> None:
        """The teacher of step 1: the model as the previous task ended, its head cut to the units it had."""
        self.teacher.clear()
        self.stage_teacher.clear()
        self.balanced_index, self.balanced_task = None, -1
        if ctx.task_idx > 0:
            n_old = ctx.scenario.units_existing_before(ctx.task_idx)
            self.teacher.build(ctx.model, old_model_state(ctx.model, n_old), ctx.device)

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """Σ_f L_D_f over the old tasks f ("distill"); in the balanced fine-tuning also L_D on the new classes with
        the model at the end of step 1 as teacher ("distill_new")."""
        t = ctx.task_idx
        if t == 0:
            return {}
        old_groups = [ctx.scenario.task_units(f) for f in range(t)]
        with torch.inference_mode():
            old = self.teacher(ctx)(batch.x)
        terms = {"distill": distillation_losses(logits, old, old_groups, self.T).mean()}
        if self.balanced_task == t:
            with torch.inference_mode():
                stage_one = self.stage_teacher(ctx)(batch.x)
            terms["distill_new"] = distillation_losses(logits, stage_one, [ctx.scenario.task_units(t)], self.T).mean()
        return terms

    def stages(self, ctx: TrainContext) -> list[Stage]:
        """The balanced fine-tuning, chosen from the model at the end of step 1 at the first call of the task."""
        if ctx.task_idx == 0 or self.balanced_epochs == 0:
            return []
        if self.balanced_task != ctx.task_idx:
            self.balanced_index = self.balanced_selection(ctx)
            self.stage_teacher.build(ctx.model, dict(ctx.model.state_dict()), ctx.device)
            self.balanced_task = ctx.task_idx
        data = self.balanced_data(ctx)
        steps = max(1, math.ceil(self.balanced_epochs * len(data.split) / ctx.batch_size))
        return [Stage("balanced fine-tuning", data, steps, self.lr_factor)]

    def balanced_selection(self, ctx: TrainContext) -> Tensor:
        """Rows of the task's training split: per new class the old classes' share of exemplars, by herding on
        the current model's features."""
        per_class = self.memory.share(ctx.tasks[: ctx.task_idx])
        task = ctx.tasks[ctx.task_idx]
        labels, features = labels_and_features(ctx.model, task.train, with_features=True)
        picks = []
        for label in range(task.n_classes):
            members = (labels == label).nonzero().squeeze(1)
            picks.append(members[herding(features[members.to(features.device)], per_class)])
        return torch.cat(picks)

    def balanced_data(self, ctx: TrainContext) -> TrainData:
        """The memory's exemplars (old classes) followed by the chosen examples of the new classes."""
        memory = self.memory.memory
        x, y = ctx.tasks[ctx.task_idx].train.gather(self.balanced_index)
        device = memory["y"].device
        split = TensorSplit(torch.cat([memory["x"], x.to(device)]), torch.cat([memory["y"], y.to(device)]))
        task_ids = torch.cat([memory["task_ids"].cpu(), torch.full((len(y),), ctx.task_idx)])
        return TrainData(split, task_ids)

    def after_task(self, ctx: TrainContext) -> None:
        """Update the memory with the final model's features; the teachers are dropped."""
        self.memory.after_task(ctx)
        self.teacher.clear()
        self.stage_teacher.clear()
        self.balanced_index, self.balanced_task = None, -1

    def state_dict(self) -> dict:
        state: dict = {"memory": self.memory.state_dict(), "balanced_task": self.balanced_task}
        for key, teacher in (("teacher", self.teacher), ("stage_teacher", self.stage_teacher)):
            teacher_state = teacher.state_dict()
            if teacher_state is not None:
                state[key] = teacher_state
        if self.balanced_index is not None:
            state["balanced_index"] = self.balanced_index
        return state

    def load_state_dict(self, state: dict) -> None:
        """The memory, and the teachers' states for a lazy rebuild."""
        unknown = set(state) - STATE_KEYS
        if unknown:
            raise ValueError(f"E2E checkpoint state has unknown keys {sorted(unknown)}")
        self.memory.load_state_dict(state.get("memory", {}))
        self.teacher.load_state_dict(state.get("teacher"))
        self.stage_teacher.load_state_dict(state.get("stage_teacher"))
        self.balanced_index = state.get("balanced_index")
        self.balanced_task = state.get("balanced_task", -1)
