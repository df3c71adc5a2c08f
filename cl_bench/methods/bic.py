"""BiC, bias correction (Wu, Chen, Wang, Ye, Liu, Guo & Fu 2019, "Large Scale Incremental Learning")."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.core.errors import ConfigError
from cl_bench.data.task import SubsetSplit, Task, TensorSplit
from cl_bench.methods.base import Batch, Method, Stage, TrainContext, TrainData
from cl_bench.methods.kd import LazyTeacher, distillation_losses, old_model_state
from cl_bench.methods.params import count, number
from cl_bench.methods.replay import Replay, with_memory

STATE_KEYS = {"memory", "teacher", "held_out", "correction", "corrected_task", "corrected_units", "teacher_correction",
              "bias_optimizer"}


def bias_corrected(logits: Tensor, correction: Tensor, units: slice) -> Tensor:
    """`logits` with the units `units` (the latest task's classes) passed through the bias correction layer,
    α·o + β, `correction` = [β, α]; the other units as they are."""
    return torch.cat([logits[:, : units.start], correction[1] * logits[:, units] + correction[0],
                      logits[:, units.stop :]], dim=1)


class BiC(Method):
    """BiC as Mammoth's models/bic.py defines it, class-IL, in two stages at every task t after the first:

    1. the task's training data less a held-out part, with the exemplar memory less its held-out part (Mammoth's
       icarl_replay), trained on L = (1 − λ)·CE + λ·T²·L_d with λ = 1/(t + 1) (Mammoth's weights; the unofficial
       code it is based on, sairin1202/BIC trainer.py, weighs T²·L_d + (1 − n_old/n_seen)·CE). CE is the
       cross-entropy over the classes seen so far ("classification"), L_d = mean_batch −Σ_{j old} softmax(z_old/T)_j
       · log softmax(z/T)_j over the old classes' units ("distill"), the teacher z_old the model as the previous task
       ended, its previous task's units passed through that task's bias correction (Mammoth's distill_after_bic);
    2. bias correction (a stage of the task, `Method.stages`): the model frozen (its gradients dropped), the two
       parameters [β, α] of the layer o_k ↦ α·o_k + β on the task's classes' logits (`bias_corrected`) trained from
       [0, 1] with Adam (`bias_lr`) for `bias_epochs` epochs on the held-out set, with the cross-entropy over the
       classes seen ("bias"). The prediction uses the corrected logits from then on, until the next task starts.

    The held-out set (Mammoth: each exemplar with probability `val_fraction`, and as many of the task's examples):
    round(val_fraction·|M|) exemplars of the memory and as many of the task's training examples, drawn at random
    at the task's start. The first task trains on the cross-entropy over its classes only. The memory: `memory_size`
    exemplars, ⌊memory_size / n⌋ of each of the n classes seen, chosen at random at a task's end from its training
    split (methods/replay.py; Mammoth keeps ⌊memory_size / tasks⌋ of each task). The trainer's "task" term is
    weighted 0.
    """

    changes_first_task = True
    scenarios = ("class",)
    owns = frozenset({"train_data", "stages", "prediction"})
    gradient_edit_order = 1  # its freezing of parameters comes after the gradients a combined method adds

    def __init__(
        self, memory_size: int = 200, T: float = 2.0, val_fraction: float = 0.1, bias_epochs: int = 250,
        bias_lr: float = 0.001,
    ):
        self.memory = Replay(memory_size, selection="random")
        self.T = number("T", T, "> 0", lambda v: v > 0)
        self.val_fraction = number("val_fraction", val_fraction, "in (0, 1)", lambda v: 0 < v < 1)
        self.bias_epochs = count("bias_epochs", bias_epochs)
        self.bias_lr = number("bias_lr", bias_lr, "> 0", lambda v: v > 0)
        self.teacher = LazyTeacher("BiC")
        self.held_out: dict[str, Tensor] = {}  # the held-out rows of the task being trained ("task", "memory", "data")
        self.correction: Tensor | None = None  # [β, α] of task `corrected_task`, as the prediction applies it
        self.corrected_task = -1
        self.corrected_units = torch.zeros(2, dtype=torch.long)  # [start, stop) of that task's units
        self.teacher_correction: Tensor | None = None  # the previous task's, applied to the teacher
        self.bias_optimizer: torch.optim.Adam | None = None  # over `correction` during the bias correction

    def check(self, tasks: list[Task]) -> None:
        """A memory with an exemplar of every class, of which at least one is held out."""
        self.memory.check(tasks)
        size = self.memory.memory_size
        if round(self.val_fraction * size) < 1:
            raise ConfigError(
                f"method.val_fraction={self.val_fraction}: holds out no exemplar of a memory of {size}; "
                f"choose at least {1 / size:.3g}"
            )

    def train_data(self, ctx: TrainContext) -> TrainData:
        """The task's training split and the memory, each less its held-out rows (chosen at the task's first call)."""
        data = super().train_data(ctx)
        memory = self.memory.memory
        if not memory:
            return data
        if int(self.held_out.get("task", -1)) != ctx.task_idx:
            k = max(1, round(self.val_fraction * len(memory["y"])))
            self.held_out = {
                "task": torch.tensor(ctx.task_idx),
                "memory": torch.randperm(len(memory["y"]), generator=ctx.generator)[:k],
                "data": torch.randperm(len(data.split), generator=ctx.generator)[:k],
            }
        kept = rows_besides(len(data.split), self.held_out["data"])
        kept_memory = rows_besides(len(memory["y"]), self.held_out["memory"]).to(memory["y"].device)
        reduced = TrainData(SubsetSplit(data.split, kept), data.task_ids[kept])
        return with_memory(reduced, {key: value[kept_memory] for key, value in memory.items()}, ctx.task_idx)

    def before_task(self, ctx: TrainContext) -> None:
        """The teacher (the model as the previous task ended) and its correction; the prediction is uncorrected
        until this task's bias correction."""
        self.teacher.clear()
        self.teacher_correction = self.correction if self.corrected_task == ctx.task_idx - 1 else None
        self.correction, self.corrected_task, self.bias_optimizer = None, -1, None
        if ctx.task_idx > 0:
            n_old = ctx.scenario.units_existing_before(ctx.task_idx)
            self.teacher.build(ctx.model, old_model_state(ctx.model, n_old), ctx.device)

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """0: the "classification" term is the cross-entropy, over the classes seen only."""
        return 0.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        t, units = ctx.task_idx, ctx.scenario.task_units(ctx.task_idx)
        targets = ctx.scenario.targets(batch.y, batch.task_ids)
        if ctx.part > 0:
            corrected = bias_corrected(logits.detach()[:, : units.stop], self.correction, units)
            return {"bias": F.cross_entropy(corrected, targets)}
        lam = 1 / (t + 1) if t > 0 else 0.0
        terms = {"classification": (1 - lam) * F.cross_entropy(logits[:, : units.stop], targets)}
        if t > 0:
            with torch.no_grad():
                old = self.teacher(ctx)(batch.x)
                if self.teacher_correction is not None:
                    old = bias_corrected(old, self.teacher_correction, ctx.scenario.task_units(t - 1))
            distill = distillation_losses(logits, old, [slice(0, units.start)], self.T).mean()
            terms["distill"] = lam * self.T**2 * distill
        return terms

    def stages(self, ctx: TrainContext) -> list[Stage]:
        """The bias correction on the held-out set (tasks after the first); [β, α] start at [0, 1] at the task's
        first call."""
        if ctx.task_idx == 0:
            return []
        if self.corrected_task != ctx.task_idx:
            self.correction = torch.tensor([0.0, 1.0], device=ctx.device, dtype=ctx.model.head.weight.dtype,
                                           requires_grad=True)
            self.bias_optimizer = torch.optim.Adam([self.correction], lr=self.bias_lr)
            units = ctx.scenario.task_units(ctx.task_idx)
            self.corrected_task, self.corrected_units = ctx.task_idx, torch.tensor([units.start, units.stop])
        data = self.held_out_data(ctx)
        steps = self.bias_epochs * (len(data.split) // min(ctx.batch_size, len(data.split)))
        return [Stage("bias correction", data, steps)]

    def held_out_data(self, ctx: TrainContext) -> TrainData:
        """The held-out exemplars followed by the held-out examples of the task."""
        memory = self.memory.memory
        rows = self.held_out["memory"].to(memory["y"].device)
        x, y = ctx.tasks[ctx.task_idx].train.gather(self.held_out["data"])
        device = memory["y"].device
        split = TensorSplit(torch.cat([memory["x"][rows], x.to(device)]), torch.cat([memory["y"][rows], y.to(device)]))
        task_ids = torch.cat([memory["task_ids"][rows].cpu(), torch.full((len(y),), ctx.task_idx)])
        return TrainData(split, task_ids)

    def after_backward(self, ctx: TrainContext) -> None:
        """In the bias correction the model is frozen: its gradients are dropped (the optimiser skips it)."""
        if ctx.part > 0:
            for parameter in ctx.model.parameters():
                parameter.grad = None

    def after_step(self, ctx: TrainContext) -> None:
        """In the bias correction, Adam's step on [β, α]."""
        if ctx.part > 0:
            self.bias_optimizer.step()
            self.bias_optimizer.zero_grad(set_to_none=True)

    def prediction_state(self) -> dict[str, Tensor]:
        """[β, α] and the units they correct ([start, stop)), once the task being trained has them."""
        if self.correction is None:
            return {}
        return {"correction": self.correction.detach().clone(), "units": self.corrected_units.clone()}

    def predictor(self, model: nn.Module, state: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """The logits, their corrected task's units passed through the bias correction layer."""
        if not state:
            return model
        start, stop = state["units"].tolist()
        return lambda x: bias_corrected(model(x), state["correction"], slice(start, stop))

    def after_task(self, ctx: TrainContext) -> None:
        """The memory updated with the task's classes; the correction is kept for the prediction."""
        self.memory.after_task(ctx)
        self.teacher.clear()
        self.bias_optimizer = None
        if self.correction is not None:
            self.correction = self.correction.detach()

    def state_dict(self) -> dict:
        state: dict = {"memory": self.memory.state_dict(), "held_out": dict(self.held_out),
                       "corrected_task": self.corrected_task, "corrected_units": self.corrected_units}
        teacher_state = self.teacher.state_dict()
        if teacher_state is not None:
            state["teacher"] = teacher_state
        for key in ("correction", "teacher_correction"):
            value = getattr(self, key)
            if value is not None:
                state[key] = value.detach().clone()
        if self.bias_optimizer is not None:
            state["bias_optimizer"] = self.bias_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - STATE_KEYS
        if unknown:
            raise ValueError(f"BiC checkpoint state has unknown keys {sorted(unknown)}")
        self.memory.load_state_dict(state.get("memory", {}))
        self.teacher.load_state_dict(state.get("teacher"))
        self.held_out = dict(state.get("held_out", {}))
        self.corrected_task = int(state.get("corrected_task", -1))
        self.corrected_units = state.get("corrected_units", torch.zeros(2, dtype=torch.long))
        self.teacher_correction = state.get("teacher_correction")
        self.correction = state.get("correction")
        self.bias_optimizer = None
        if "bias_optimizer" in state:  # inside a bias correction: [β, α] go on training
            self.correction = self.correction.clone().requires_grad_(True)
            self.bias_optimizer = torch.optim.Adam([self.correction], lr=self.bias_lr)
            self.bias_optimizer.load_state_dict(state["bias_optimizer"])


def rows_besides(n: int, held: Tensor) -> Tensor:
    """range(n) less the rows `held`, in order."""
    kept = torch.ones(n, dtype=torch.bool)
    kept[held.cpu()] = False
    return kept.nonzero().squeeze(1)
