"""LwF.MC, the multi-class Learning without Forgetting of Rebuffi, Kolesnikov, Sperl & Lampert (2017, "iCaRL:
Incremental Classifier and Representation Learning"): iCaRL's loss without its exemplars and classifier."""

from __future__ import annotations

import torch
from torch import Tensor

from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.icarl import multi_class_bce
from cl_bench.methods.kd import LazyTeacher, old_model_state

STATE_KEYS = {"teacher"}


class LwFMC(Method):
    """LwF.MC as Mammoth's models/lwf_mc.py defines it, class-IL: at task t the loss ("lwf_mc", which replaces the
    cross-entropy) is `multi_class_bce` over the units of the classes seen so far, the old classes' targets the
    sigmoids of the model as the previous task left it (a frozen copy run on each batch); the first task's targets are
    one-hot. The units of classes not seen yet (a full head, `class_head=full`) are left out of the loss, as Mammoth
    cuts its outputs to them. The prediction is the argmax of the logits. No exemplars, no weight decay term
    (Mammoth's `wd_reg` defaults to 0).
    """

    changes_first_task = True
    scenarios = ("class",)

    def __init__(self) -> None:
        self.teacher = LazyTeacher("LwF.MC")

    def before_task(self, ctx: TrainContext) -> None:
        """The teacher: a frozen copy of the model as the previous task ended."""
        self.teacher.clear()
        if ctx.task_idx > 0:
            n_old = ctx.scenario.units_existing_before(ctx.task_idx)
            self.teacher.build(ctx.model, old_model_state(ctx.model, n_old), ctx.device)

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """0: the BCE term "lwf_mc" replaces the cross-entropy."""
        return 0.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        units = ctx.scenario.task_units(ctx.task_idx)
        old = None
        if ctx.task_idx > 0:
            with torch.no_grad():
                old = torch.sigmoid(self.teacher(ctx)(batch.x)[:, : units.start])
        targets = ctx.scenario.targets(batch.y, batch.task_ids)
        return {"lwf_mc": multi_class_bce(logits[:, : units.stop], targets, old)}

    def after_task(self, ctx: TrainContext) -> None:
        self.teacher.clear()

    def state_dict(self) -> dict:
        teacher_state = self.teacher.state_dict()
        return {} if teacher_state is None else {"teacher": teacher_state}

    def load_state_dict(self, state: dict) -> None:
        """The teacher's state, for a lazy rebuild (a resume inside a task)."""
        unknown = set(state) - STATE_KEYS
        if unknown:
            raise ValueError(f"LwF.MC checkpoint state has unknown keys {sorted(unknown)}")
        self.teacher.load_state_dict(state.get("teacher"))
