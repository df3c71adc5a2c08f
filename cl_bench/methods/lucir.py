"""LUCIR, learning a unified classifier incrementally via rebalancing (Hou, Pan, Loy, Wang & Lin 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.core.errors import ConfigError
from cl_bench.data.task import Split, Task, TensorSplit
from cl_bench.methods.base import Batch, Method, Stage, TrainContext, TrainData
from cl_bench.methods.kd import LazyTeacher, old_model_state
from cl_bench.methods.params import count, flag, number
from cl_bench.methods.replay import Replay, labels_and_features, with_memory
from cl_bench.models.cosine_head import CosineLinear

STATE_KEYS = {"memory", "teacher", "stage_teacher", "fitted_task"}
FINETUNE_DECAY = 0.1  # the fine-tuning's learning rate after its milestone (Mammoth's MultiStepLR gamma)


def less_forget(features: Tensor, old_features: Tensor) -> Tensor:
    """Hou et al.'s less-forget constraint: mean over examples of 1 − cos(φ(x), φ_old(x)) (torch's
    cosine_embedding_loss with target 1, as Mammoth and the authors' code write it)."""
    return F.cosine_embedding_loss(features, old_features, torch.ones(len(features), device=features.device))


def margin_ranking(cosine: Tensor, units: Tensor, n_old: int, k: int, margin: float) -> Tensor:
    """Hou et al.'s inter-class separation: for every example of an old class (unit < `n_old`), its ground-truth
    cosine score against each of the `k` highest scores among the units from `n_old` on, the mean over those pairs
    of max(0, margin − (score_gt − score_novel)); 0 when the batch holds no old-class example."""
    truth = cosine.gather(1, units[:, None])
    hinge = (margin - (truth - cosine[:, n_old:].topk(k, dim=1).values)).clamp(min=0)
    old = (units < n_old).to(cosine.dtype)[:, None]
    return (hinge * old).sum() / (old.sum() * k).clamp(min=1)


class LUCIR(Method):
    """LUCIR as Mammoth's models/lucir.py defines it, class-IL:

    - a cosine classifier (models/cosine_head.py): scores σ·cos(φ(x), w_k), no bias, σ learned from 1; the
      cross-entropy on those scores is the trainer's "task" term, over every unit of the head;
    - at a task t > 0: the training data is the task's examples and the exemplar memory (`memory_size`, herding,
      ⌊memory_size / n⌋ of each of the n classes seen); the new classes' rows imprinted (`imprint`): each the
      normalised mean of the normalised features of the class's training examples, scaled to the mean norm of the
      old rows; only the task's rows of the classifier, σ and the feature extractor trained (the other rows kept);
      and two terms on every batch: λ_t · mean(1 − cos(φ(x), φ_old(x))) ("less_forget", `less_forget`, φ_old the
      features of the model as the previous task ended) with λ_t = lambda_base · √(n_old / n_new) (the authors'
      code, hshustc/CVPR19_Incremental_Learning; Mammoth's end_task sets lambda_base · √(t − 1), one task behind,
      0 at t = 1), and lambda_mr times the margin ranking loss of the old classes' examples ("margin_ranking",
      `margin_ranking`, `k_mr`, `margin`);
    - when a task's main steps end (stages of the task, `Method.stages`): the memory updated, then a class-balanced
      fine-tuning on the memory alone for `fitting_epochs` epochs, only the task's classifier rows and σ trained, at
      the task's learning rate × `finetune_lr_factor` (Mammoth's lr_finetune / lr), × 0.1 after `finetune_milestone`
      steps (Mammoth's MultiStepLR, stepped per batch), with the same loss, φ_old the model at the end of the main
      steps.

    The first task trains on its data with the cross-entropy only (its fine-tuning too). Frozen rows and parameters
    are exact under any optimiser: their gradients are zeroed (or dropped) before the step and their values put back
    after it. The prediction is the argmax of the scores.
    """

    changes_first_task = True
    scenarios = ("class",)
    owns = frozenset({"train_data", "stages", "head"})
    gradient_edit_order = 1  # its freezing of parameters comes after the gradients a combined method adds

    def __init__(
        self, memory_size: int = 200, lambda_base: float = 5.0, lambda_mr: float = 1.0, k_mr: int = 2,
        margin: float = 0.5, imprint: bool = True, fitting_epochs: int = 20, finetune_lr_factor: float = 1 / 3,
        finetune_milestone: int = 10,
    ):
        self.memory = Replay(memory_size, selection="herding")
        self.lambda_base = number("lambda_base", lambda_base, "≥ 0", lambda v: v >= 0)
        self.lambda_mr = number("lambda_mr", lambda_mr, "≥ 0", lambda v: v >= 0)
        self.k_mr = count("k_mr", k_mr)
        self.margin = number("margin", margin, "≥ 0", lambda v: v >= 0)
        self.imprint = flag("imprint", imprint)
        self.fitting_epochs = count("fitting_epochs", fitting_epochs)
        self.finetune_lr_factor = number("finetune_lr_factor", finetune_lr_factor, "> 0", lambda v: v > 0)
        self.finetune_milestone = count("finetune_milestone", finetune_milestone)
        self.teacher = LazyTeacher("LUCIR")  # the model as the previous task ended
        self.stage_teacher = LazyTeacher("LUCIR")  # the model at the end of the task's main steps
        self.fitted_task = -1  # the task whose fine-tuning was set up (memory updated, stage teacher taken)
        self.kept: list[tuple[Tensor, slice, Tensor]] = []  # frozen rows' values, from after_backward to after_step

    def head(self, linear: nn.Linear) -> nn.Module:
        cosine = CosineLinear(linear.in_features, linear.out_features, scale=1.0, learn_scale=True)
        return cosine.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def check(self, tasks: list[Task]) -> None:
        self.memory.check(tasks)
        fewest = min((task.n_classes for task in tasks[1:]), default=self.k_mr)
        if self.k_mr > fewest:
            raise ConfigError(f"method.k_mr={self.k_mr}: more than the {fewest} classes of a task after the first; "
                              f"choose at most {fewest}")

    def train_data(self, ctx: TrainContext) -> TrainData:
        """The task's training split followed by the memory's exemplars."""
        return with_memory(super().train_data(ctx), self.memory.memory, ctx.task_idx)

    def before_task(self, ctx: TrainContext) -> None:
        """The teacher (tasks after the first), then the new classes' rows imprinted."""
        self.teacher.clear()
        self.stage_teacher.clear()
        if ctx.task_idx == 0:
            return
        units = ctx.scenario.task_units(ctx.task_idx)
        self.teacher.build(ctx.model, old_model_state(ctx.model, ctx.scenario.units_existing_before(ctx.task_idx)),
                           ctx.device)
        if self.imprint:
            imprint_rows(ctx.model, ctx.tasks[ctx.task_idx].train, units)

    def lambda_less_forget(self, ctx: TrainContext) -> float:
        """λ_t = lambda_base · √(n_old / n_new)."""
        units = ctx.scenario.task_units(ctx.task_idx)
        return self.lambda_base * math.sqrt(units.start / (units.stop - units.start))

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """The less-forget constraint and the margin ranking loss (tasks after the first)."""
        if ctx.task_idx == 0:
            return {}
        features = ctx.model.features(batch.x).flatten(1)
        with torch.no_grad():
            old_features = (self.stage_teacher if ctx.part > 0 else self.teacher)(ctx).features(batch.x).flatten(1)
        cosine = ctx.model.head.cosine(features)
        units = ctx.scenario.targets(batch.y, batch.task_ids)
        n_old = ctx.scenario.task_units(ctx.task_idx).start
        return {
            "less_forget": self.lambda_less_forget(ctx) * less_forget(features, old_features),
            "margin_ranking": self.lambda_mr * margin_ranking(cosine, units, n_old, self.k_mr, self.margin),
        }

    def after_backward(self, ctx: TrainContext) -> None:
        """Only the task's classifier rows, σ and (in the main steps) the feature extractor are trained: the other
        rows' gradients are zeroed and their values kept for after_step; in the fine-tuning the feature extractor's
        gradients are dropped (the optimiser skips it)."""
        head = ctx.model.head
        units = ctx.scenario.task_units(ctx.task_idx)
        if ctx.part > 0:
            for parameter in ctx.model.features.parameters():
                parameter.grad = None
        self.kept = []
        for rows in (slice(0, units.start), slice(units.stop, head.out_features)):
            if head.weight.grad is not None:
                head.weight.grad[rows] = 0
            self.kept.append((head.weight, rows, head.weight.detach()[rows].clone()))

    def after_step(self, ctx: TrainContext) -> None:
        """The kept rows put back (a momentum or a weight decay would have moved them)."""
        with torch.no_grad():
            for parameter, rows, values in self.kept:
                parameter[rows] = values
        self.kept = []

    def stages(self, ctx: TrainContext) -> list[Stage]:
        """The class-balanced fine-tuning on the memory, updated (and the stage teacher taken) at the task's first
        call."""
        if self.fitted_task != ctx.task_idx:
            self.stage_teacher.build(ctx.model, dict(ctx.model.state_dict()), ctx.device)
            self.memory.after_task(ctx)
            self.fitted_task = ctx.task_idx
        memory = self.memory.memory
        data = TrainData(TensorSplit(memory["x"], memory["y"]), memory["task_ids"].cpu())
        total = self.fitting_epochs * (len(data.split) // min(ctx.batch_size, len(data.split)))
        first = min(self.finetune_milestone, total)
        stages = [Stage("class-balanced fine-tuning", data, first, self.finetune_lr_factor)]
        if total > first:
            stages.append(Stage("class-balanced fine-tuning, lr × 0.1", data, total - first,
                                self.finetune_lr_factor * FINETUNE_DECAY))
        return stages

    def after_task(self, ctx: TrainContext) -> None:
        self.teacher.clear()
        self.stage_teacher.clear()

    def state_dict(self) -> dict:
        state: dict = {"memory": self.memory.state_dict(), "fitted_task": self.fitted_task}
        for key, teacher in (("teacher", self.teacher), ("stage_teacher", self.stage_teacher)):
            teacher_state = teacher.state_dict()
            if teacher_state is not None:
                state[key] = teacher_state
        return state

    def load_state_dict(self, state: dict) -> None:
        """The memory, and the teachers' states for a lazy rebuild."""
        unknown = set(state) - STATE_KEYS
        if unknown:
            raise ValueError(f"LUCIR checkpoint state has unknown keys {sorted(unknown)}")
        self.memory.load_state_dict(state.get("memory", {}))
        self.teacher.load_state_dict(state.get("teacher"))
        self.stage_teacher.load_state_dict(state.get("stage_teacher"))
        self.fitted_task = int(state.get("fitted_task", -1))


def imprint_rows(model: nn.Module, split: Split, units: slice) -> None:
    """Hou et al.'s weight imprinting: each of the task's rows `units` (the split's labels 0, 1, ... in order) the
    normalised mean of the normalised features of its class's examples, times the mean norm of the rows before
    `units.start`."""
    labels, features = labels_and_features(model, split, with_features=True)
    phi = F.normalize(features, dim=1)
    with torch.no_grad():
        weight = model.head.weight
        scale = weight[: units.start].norm(dim=1).mean()
        for label, row in enumerate(range(units.start, units.stop)):
            members = (labels == label).nonzero().squeeze(1).to(phi.device)
            weight[row] = F.normalize(phi[members].mean(0), dim=0) * scale
