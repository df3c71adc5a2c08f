"""GDumb, a greedy sampler and a dumb learner (Prabhu, Torr & Dokania 2020, "GDumb: A Simple Approach that
Questions Our Progress in Continual Learning")."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.core.errors import ConfigError
from cl_bench.data.task import Task, TensorSplit
from cl_bench.methods.base import Batch, Method, Stage, TrainContext, TrainData
from cl_bench.methods.der import last_writes, reservoir_slots
from cl_bench.methods.params import choice, count, number
from cl_bench.methods.replay import check_memory_size
from cl_bench.models.head import reset_parameters

SAMPLERS = ("reservoir", "balanced")
MEMORY_KEYS = ("x", "y", "task_ids")
CUTMIX_PROBABILITY = 0.5  # of a fitting batch being cut and mixed (Mammoth's and the authors' cutmix_prob)


def warm_restarts_factors(epochs: int, warmup_factor: float, min_factor: float) -> list[float]:
    """The learning rate of each epoch of GDumb's fit as a fraction of its maximum, as Mammoth's fit_buffer sets it:
    `warmup_factor` in epoch 0, 1 in epoch 1, then SGDR's cosine annealing with warm restarts (Loshchilov & Hutter
    2017; torch's CosineAnnealingWarmRestarts with T_0 = 1, T_mult = 2, eta_min = `min_factor`) stepped once per
    epoch from epoch 2 on: min + (1 − min)·(1 + cos(π·T_cur / T_i)) / 2, T_cur counting epochs since the last restart
    and the cycles T_i = 1, 2, 4, ... epochs long."""
    factors = [warmup_factor, 1.0][:epochs]
    t_cur, t_i = 0, 1
    for _ in range(2, epochs):
        t_cur += 1
        if t_cur >= t_i:
            t_cur, t_i = t_cur - t_i, t_i * 2
        factors.append(min_factor + (1 - min_factor) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
    return factors


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Yun et al.'s (2019) CutMix box for a mixing ratio `lam`, as Mammoth's and the authors' rand_bbox draw it:
    sides ⌊H·√(1 − lam)⌋ and ⌊W·√(1 − lam)⌋ about a uniformly drawn centre, clipped to the image; (top, bottom,
    left, right)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)),
            int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))


class GDumb(Method):
    """GDumb as Mammoth's models/gdumb.py defines it: a memory of `memory_size` examples filled from the stream of
    every task's training examples (its main steps, one epoch: nothing else is learned there, the step's gradients
    are dropped); when a task's main steps end, a model trained from scratch on the memory alone. The prediction is
    that model's.

    The sampler: `reservoir` (Mammoth's buffer: Vitter's algorithm R over every example seen, as DER's) or
    `balanced` (the authors' code, drimpossible/GDumb src/dataloader.py: the first ⌊memory_size / C⌋ examples of
    each of the C classes of the run, in stream order).

    The fit (stages of the task, `Method.stages`): the model's parameters re-initialised (PyTorch's defaults, the
    global random stream), then `fitting_epochs` epochs over the memory, one stage each, each at the run's learning
    rate (Mammoth's `maxlr`) × `warm_restarts_factors` (`warmup_factor`, 1, then SGDR to `min_lr_factor`, Mammoth's
    `minlr` / `maxlr`), with the run's optimiser and batch size. Its loss ("fit") is the cross-entropy under the
    scenario; with probability 1/2 a batch is cut and mixed (CutMix, `cutmix_alpha` > 0): a box of every image is
    replaced by the same box of another image of the batch (a random permutation), the mixing ratio λ ~ Beta(α, α)
    adjusted to the box's area, and the loss is λ·CE(y) + (1 − λ)·CE(y of the other image), on a forward pass of
    its own. Mammoth fits once, after the last task; fitting after every task gives the same final model and a
    model to evaluate at every task. The trainer's "task" term is weighted 0.
    """

    changes_first_task = True
    owns = frozenset({"stages"})
    gradient_edit_order = 1  # its freezing of parameters comes after the gradients a combined method adds

    def __init__(
        self, memory_size: int = 200, sampler: str = "reservoir", fitting_epochs: int = 256,
        warmup_factor: float = 0.1, min_lr_factor: float = 0.01, cutmix_alpha: float = 1.0,
    ):
        self.memory_size = count("memory_size", memory_size)
        self.sampler = choice("sampler", sampler, SAMPLERS)
        self.fitting_epochs = count("fitting_epochs", fitting_epochs)
        self.warmup_factor = number("warmup_factor", warmup_factor, "> 0", lambda v: v > 0)
        self.min_lr_factor = number("min_lr_factor", min_lr_factor, "in [0, 1]", lambda v: 0 <= v <= 1)
        self.cutmix_alpha = number("cutmix_alpha", cutmix_alpha, "≥ 0 (0: no CutMix)", lambda v: v >= 0)
        self.memory: dict[str, Tensor] = {}  # memory_size rows, the first `filled` of them held
        self.seen = 0  # stream examples offered to the memory so far
        self.filled = 0
        self.fitted_task = -1  # the task whose fit has started (its model re-initialised)

    def check(self, tasks: list[Task]) -> None:
        """Every class can have an exemplar; CutMix needs image inputs."""
        check_memory_size(self.memory_size, tasks)
        flat = [task.name for task in tasks if len(task.input_shape) != 3]
        if self.cutmix_alpha > 0 and flat:
            raise ConfigError(
                f"method.cutmix_alpha={self.cutmix_alpha}: CutMix cuts boxes out of images [C, H, W], but task "
                f"{flat[0]!r} has inputs of shape {tasks[0].input_shape}; set method.cutmix_alpha=0"
            )

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """0: the fit's term "fit" is the loss; the main steps learn nothing."""
        return 0.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """In the main steps, the batch's examples are offered to the memory; in the fit, its loss."""
        if ctx.part == 0:
            self.offer(ctx, batch)
            return {}
        return {"fit": self.fit_loss(ctx, batch, logits)}

    def after_backward(self, ctx: TrainContext) -> None:
        """The main steps' gradients are dropped (the optimiser skips parameters without one): they learn nothing."""
        if ctx.part == 0:
            for parameter in ctx.model.parameters():
                parameter.grad = None

    def offer(self, ctx: TrainContext, batch: Batch) -> None:
        """The sampler's choice of the batch's examples enters the memory."""
        x, y, task_ids = batch.x, batch.y, batch.task_ids
        if not self.memory:
            size = self.memory_size
            self.memory = {"x": x.new_zeros((size, *x.shape[1:])), "y": y.new_zeros(size),
                           "task_ids": task_ids.new_zeros(size)}
        if self.sampler == "reservoir":
            target, source = last_writes(reservoir_slots(self.seen, len(y), self.memory_size, ctx.generator),
                                         self.memory_size)
            self.filled = min(self.memory_size, self.seen + len(y))
        else:
            source = self.balanced_choice(ctx, y, task_ids)
            target = torch.arange(self.filled, self.filled + len(source))
            self.filled += len(source)
        self.seen += len(y)
        device = self.memory["y"].device
        target, source = target.to(device), source.to(device)
        for key, value in zip(MEMORY_KEYS, (x, y, task_ids)):
            self.memory[key][target] = value[source]

    def balanced_choice(self, ctx: TrainContext, y: Tensor, task_ids: Tensor) -> Tensor:
        """The rows of the batch the balanced sampler keeps: those whose class holds fewer than its quota of
        ⌊memory_size / C⌋ examples, counting the batch's earlier rows of the class."""
        n_units = ctx.scenario.n_outputs(len(ctx.tasks) - 1)
        quota = self.memory_size // n_units
        held = ctx.scenario.targets(self.memory["y"][: self.filled], self.memory["task_ids"][: self.filled])
        counts = torch.bincount(held, minlength=n_units)
        units = ctx.scenario.targets(y, task_ids).to(counts.device)
        one_hot = F.one_hot(units, n_units)
        earlier = (one_hot.cumsum(0) - one_hot).gather(1, units[:, None]).squeeze(1)  # the batch's rows before
        return ((counts[units] + earlier) < quota).nonzero().squeeze(1).cpu()

    def stages(self, ctx: TrainContext) -> list[Stage]:
        """The fit: the model re-initialised (once, at the task's first call), then an epoch over the memory per
        stage."""
        if self.fitted_task != ctx.task_idx:
            reset_parameters(ctx.model)
            self.fitted_task = ctx.task_idx
        n = self.filled
        data = TrainData(TensorSplit(self.memory["x"][:n], self.memory["y"][:n]), self.memory["task_ids"][:n].cpu())
        steps = n // min(ctx.batch_size, n)  # an epoch: the trainer drops an epoch's incomplete last batch
        factors = warm_restarts_factors(self.fitting_epochs, self.warmup_factor, self.min_lr_factor)
        return [Stage(f"fit, epoch {e + 1}/{len(factors)}", data, steps, factor) for e, factor in enumerate(factors)]

    def fit_loss(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        """The cross-entropy of the batch, or, with probability 1/2 (and `cutmix_alpha` > 0), of its cut and mixed
        images."""
        loss = ctx.scenario.loss
        if self.cutmix_alpha == 0 or float(torch.rand((), generator=ctx.generator)) >= CUTMIX_PROBABILITY:
            return loss(logits, batch.y, batch.task_ids)
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=ctx.generator)))
        lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        other = torch.randperm(len(batch.y), generator=ctx.generator).to(batch.x.device)
        height, width = batch.x.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        mixed = batch.x.clone()
        mixed[..., top:bottom, left:right] = batch.x[other][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
        mixed_logits = ctx.model(mixed)
        return (lam * loss(mixed_logits, batch.y, batch.task_ids)
                + (1 - lam) * loss(mixed_logits, batch.y[other], batch.task_ids[other]))

    def state_dict(self) -> dict:
        return {"memory": dict(self.memory), "seen": self.seen, "filled": self.filled, "fitted_task": self.fitted_task}

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - {"memory", "seen", "filled", "fitted_task"}
        if unknown:
            raise ValueError(f"GDumb checkpoint state has unknown keys {sorted(unknown)}")
        self.memory = dict(state.get("memory", {}))
        self.seen, self.filled = int(state.get("seen", 0)), int(state.get("filled", 0))
        self.fitted_task = int(state.get("fitted_task", -1))
