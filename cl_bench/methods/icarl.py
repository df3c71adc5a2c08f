"""iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert 2017, "iCaRL: Incremental Classifier and Representation Learning")."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import Batch, TrainContext
from cl_bench.methods.kd import LazyTeacher, old_model_state
from cl_bench.methods.params import number
from cl_bench.methods.replay import FEATURE_BATCH_SIZE, Replay

STATE_KEYS = {"memory", "teacher"}


def normalised_features(model: nn.Module, x: Tensor) -> Tensor:
    """φ(x) / ‖φ(x)‖, φ = `model.features`, computed in chunks of FEATURE_BATCH_SIZE."""
    chunks = [model.features(x[i : i + FEATURE_BATCH_SIZE]).flatten(1) for i in range(0, len(x), FEATURE_BATCH_SIZE)]
    return F.normalize(torch.cat(chunks), dim=1)


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32 if it is of a narrower float type (bf16 under autocast), else as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def nearest_mean_scores(phi: Tensor, means: Tensor, present: Tensor) -> Tensor:
    """−‖φ − μ_y‖² for every unit y (−inf for a unit with no exemplars): the argmax is the nearest mean. In float32
    under any autocast: with normalised features ‖φ‖² + ‖μ‖² − 2φ·μ is 2 − 2φ·μ, which cancels, and a bf16 product
    φ·μ would leave percents of error in the distances of close classes."""
    with torch.autocast(phi.device.type, enabled=False):
        phi, means = at_least_float32(phi), at_least_float32(means)
        squared = phi.square().sum(1, keepdim=True) + means.square().sum(1) - 2 * phi @ means.T
    return (-squared).masked_fill(~present, float("-inf"))


def class_means(model: nn.Module, x: Tensor, units: Tensor, n_units: int) -> tuple[Tensor, Tensor]:
    """For each of `n_units` output units, the L2-normalised mean of the normalised features of its exemplars
    `x` (their units `units`), summed in float32 (the features may be bf16, under autocast), and whether it has any."""
    phi = at_least_float32(normalised_features(model, x))
    sums = phi.new_zeros(n_units, phi.shape[1]).index_add_(0, units, phi)
    return F.normalize(sums, dim=1), torch.bincount(units, minlength=n_units) > 0


def multi_class_bce(logits: Tensor, units: Tensor, old_probabilities: Tensor | None) -> Tensor:
    """iCaRL's representation-learning loss over `logits`' columns (iCaRL's: every unit; LwF.MC's: the units seen so
    far): the mean over examples and units of the binary cross-entropy of sigmoid(logits), the targets one-hot on each
    example's unit `units` and, on the first `old_probabilities.shape[1]` units (the old classes), the previous
    model's sigmoids instead."""
    targets = F.one_hot(units, logits.shape[1]).to(logits.dtype)
    if old_probabilities is not None:
        targets[:, : old_probabilities.shape[1]] = old_probabilities
    return F.binary_cross_entropy_with_logits(logits, targets)


class ICaRL(Replay):
    """iCaRL, class-IL only: a herding exemplar memory, sigmoid-BCE representation learning with distillation
    of the previous model's outputs, and the nearest-mean-of-exemplars classifier (Rebuffi et al. 2017).

    Representation learning (their Algorithm 3): on each batch of the task's examples followed by exemplars
    drawn from the memory (`extend_batch`, index -1),

        L = −mean_{i, y} [ t_iy·log σ(z_iy) + (1 − t_iy)·log(1 − σ(z_iy)) ],

    over every example i and every output unit y seen so far; t_iy = [y = y_i] for the units of the task
    being trained (so 0 for an exemplar), and t_iy = σ(z_old_iy / T) for the old units, z_old the logits of
    the model as it was when the previous task ended (a frozen copy, run live on the same inputs), T the
    `temperature`: 1 in Rebuffi et al. and Mammoth, 2 in van de Ven & Tolias's code (`sigmoid(scores / KD_temp)`,
    their `--temp`). The
    paper writes the sum over i and y; like the authors' and Mammoth's code we take the mean (a learning-
    rate scale). It is the term "icarl"; `task_loss_weight` is 0, so the trainer's cross-entropy "task"
    term is logged as 0 and adds no gradient. Task A trains with this loss too (`changes_first_task`).

    Memory (their Algorithms 4, 5; Replay's with herding selection): K = `memory_size` exemplars, ⌊K / n⌋ per
    class over the n classes seen, chosen by herding on L2-normalised `model.features` at the task's end;
    the older classes keep the first ⌊K / n⌋ of theirs. `replay_batch_size` exemplars (default batch_size)
    join each batch, where the paper trains on the union of the new data and the exemplars.

    Classification (their Algorithm 1): y* = argmin_y ‖φ(x) − μ_y‖, φ the L2-normalised features and μ_y the
    re-normalised mean of φ over class y's exemplars, computed with the model being evaluated. The paper
    also averages φ with the horizontally flipped image's; we do not (our inputs are not all images).
    Evaluations happen during a task too, before its classes have exemplars: there the exemplar set is the
    one the task's end would store if the task ended now (the memory cut to the new share, plus a herding
    selection of the task's classes with the current model). So the classifier at the task's last step is
    the one kept after it, and the nearest mean predicts from task A's first evaluation on.
    `prediction_state` is that exemplar set (inputs and output units); the logits predict only while it is
    empty (before any task is seen).
    """

    changes_first_task = True
    scenarios = ("class",)
    owns = frozenset({"batch", "prediction"})

    def __init__(self, memory_size: int = 200, replay_batch_size: int | None = None, temperature: float = 1.0):
        super().__init__(memory_size, "herding", replay_batch_size)
        self.temperature = number("temperature", temperature, "> 0", lambda v: v > 0)
        self.teacher = LazyTeacher("iCaRL")
        self.live: TrainContext | None = None  # the task being trained, whose exemplars evaluation selects live
        self.scenario: Scenario | None = None

    def before_task(self, ctx: TrainContext) -> None:
        """The teacher: a frozen copy of the model as the previous task left it (its head's old rows)."""
        self._follow(ctx)
        self.teacher.clear()
        if ctx.task_idx > 0:
            n_old = ctx.scenario.units_existing_before(ctx.task_idx)
            self.teacher.build(ctx.model, old_model_state(ctx.model, n_old), ctx.device)

    def resume_task(self, ctx: TrainContext) -> None:
        """A run continues inside a task: iCaRL notes the task being trained, whose classes evaluation selects
        exemplars of (as `before_task` does)."""
        self._follow(ctx)

    def _follow(self, ctx: TrainContext) -> None:
        self.live, self.scenario = ctx, ctx.scenario

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """0: the BCE term "icarl" replaces the cross-entropy."""
        return 0.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """iCaRL's BCE over the units seen so far: one-hot targets on the task's units, the previous model's
        sigmoids (at `temperature`) on the old ones, for every example of the batch (exemplars included)."""
        old = None
        if ctx.task_idx > 0:
            n_old = ctx.scenario.task_units(ctx.task_idx).start  # the old classes' units (class-IL)
            with torch.no_grad():
                old = torch.sigmoid(self.teacher(ctx)(batch.x)[:, :n_old] / self.temperature)
        units = ctx.scenario.targets(batch.y, batch.task_ids)
        return {"icarl": multi_class_bce(logits, units, old)}

    def after_task(self, ctx: TrainContext) -> None:
        """The old classes cut to ⌊K / n⌋ exemplars, the task's classes' herding selection added."""
        self.memory = self._selection(ctx)
        self.live, self.scenario = None, ctx.scenario
        self.teacher.clear()

    def _selection(self, ctx: TrainContext) -> dict[str, Tensor]:
        """The memory as it is once task `ctx.task_idx` ends with `ctx.model` (Replay's reduce-then-add rule)."""
        per_class = self.share(ctx.tasks[: ctx.task_idx + 1])
        new = self._exemplars(ctx, per_class)
        if not self.memory:
            return new
        kept = self.memory["rank"] < per_class
        return {key: torch.cat([self.memory[key][kept], new[key].to(self.memory[key].device)]) for key in new}

    def prediction_state(self) -> dict[str, Tensor]:
        """The exemplars the nearest-mean classifier uses now: inputs `x` and output units `unit`."""
        exemplars = self.memory if self.live is None else self._selection(self.live)
        if not exemplars:
            return {}
        if self.scenario is None:
            raise RuntimeError("iCaRL holds exemplars but saw no task: call before_task or train_data first")
        return {"x": exemplars["x"], "unit": self.scenario.targets(exemplars["y"], exemplars["task_ids"])}

    def predictor(self, model: nn.Module, state: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """Nearest mean of exemplars: −‖φ(x) − μ_y‖² per unit, the means computed once with `model`; the logits
        while `state` holds no exemplars."""
        if not state:
            return model
        means, present = class_means(model, state["x"], state["unit"], model.head.out_features)
        return lambda x: nearest_mean_scores(normalised_features(model, x), means, present)

    def state_dict(self) -> dict:
        state: dict = {"memory": dict(self.memory)}
        teacher_state = self.teacher.state_dict()
        if teacher_state is not None:
            state["teacher"] = teacher_state
        return state

    def load_state_dict(self, state: dict) -> None:
        """The memory, and the teacher's state for a lazy rebuild (a resume inside a task)."""
        unknown = set(state) - STATE_KEYS
        if unknown or "memory" not in state:
            raise ValueError(f"iCaRL checkpoint state has keys {sorted(state)}, expected memory and teacher")
        super().load_state_dict(state["memory"])
        self.teacher.load_state_dict(state.get("teacher"))
