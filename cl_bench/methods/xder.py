"""X-DER, eXtended Dark Experience Replay (Boschini, Bonicelli, Buzzega, Porrello & Calderara 2022, "Class-Incremental
Continual Learning into the eXtended DER-verse"), with the cross-entropy on future heads' constraint only (X-DER CE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import Batch, TrainContext
from cl_bench.methods.der import DER, logit_mse
from cl_bench.methods.params import number
from cl_bench.methods.replay import FEATURE_BATCH_SIZE, labels_and_features

BUFFER_VIEW = ("logits", "units")  # what the α term reads of a buffered example


def transplant(stored: Tensor, current: Tensor, units: Tensor, span: slice, gamma: float) -> Tensor:
    """X-DER's logit update (Mammoth's update_logits): `stored` with its columns `span` replaced by `current`'s, those
    scaled by γ·stored[unit] / max(current[span]) in the rows where that maximum exceeds stored[unit], the example's
    ground-truth logit (its unit `units`), so that the transplanted heads stay below it."""
    part = current[:, span]
    truth = stored.gather(1, units[:, None]).squeeze(1)
    top = part.max(1).values
    scale = torch.where(top > truth, gamma * truth / top, torch.ones_like(top))
    updated = stored.clone()
    updated[:, span] = part * scale[:, None]
    return updated


def own_head(scenario: Scenario, task_ids: Tensor, width: int) -> Tensor:
    """[N, width]: True at the units of each example's task (its head, class-IL)."""
    owner = torch.repeat_interleave(torch.arange(len(scenario.classes_per_task)),
                                    torch.tensor(scenario.classes_per_task))[:width]
    return owner.to(task_ids.device)[None, :] == task_ids[:, None]


def ranks_within(units: Tensor, n_units: int) -> Tensor:
    """Each entry's rank among the entries of its unit before it (0 for the first of its unit)."""
    one_hot = F.one_hot(units, n_units)
    return (one_hot.cumsum(0) - one_hot).gather(1, units[:, None]).squeeze(1)


class XDER(DER):
    """X-DER as Mammoth's models/xder_ce.py defines it (its X-DER with cross-entropy; Mammoth's xder.py adds a
    supervised-contrastive term on the future heads over a colour-image augmentation that does not apply to
    one-channel MNIST, left out), class-IL, on DER's buffer draws (methods/der.py): at task t, with n_past and
    n_seen the units of the earlier tasks and of the tasks so far,

        L = CE(f(x)[n_past:n_seen], y − n_past)                                   "stream", the task's own head
          + α·MSE(f(x'), z')                                                     "der_logits", over every unit
          + β·CE(f(x'')[:n_past], y'')                                           "der_labels", the past heads
          + η·mean over violating rows of (max f[n_seen:] + margin − max f[own head])   "future"

    the last on the task's examples and the drawn buffer examples (each draw's repeats counted once), for the rows
    where the future heads' best logit is not `margin` below the example's own head's.

    The buffer is filled at a task's end, not by reservoir: every class seen keeps the first ⌊buffer_size / n_seen⌋
    of its examples, and the task's classes share the free slots (the remainder going to classes drawn at random),
    each taking the first of its training examples in a random order, with the logits the model gives them, their
    past heads `transplant`ed below the ground truth. Then the buffered examples of earlier tasks take the model's
    current logits on the current and future heads (`transplant`, γ = `gamma`), and during the next task so does a
    drawn example of an earlier task, with probability 1 / (the times it was drawn in the task). `seen` (DER's
    count of examples offered to the reservoir) is here the number of examples the buffer holds. The trainer's
    "task" term is weighted 0.
    """

    scenarios = ("class",)

    def __init__(
        self, buffer_size: int = 200, alpha: float = 0.1, beta: float = 0.5, gamma: float = 0.85, margin: float = 0.1,
        eta: float = 0.005, buffer_batch_size: int | None = None,
    ):
        super().__init__(buffer_size, alpha, beta, buffer_batch_size)
        self.gamma = number("gamma", gamma, "> 0", lambda v: v > 0)
        self.margin = number("margin", margin, "≥ 0", lambda v: v >= 0)
        self.eta = number("eta", eta, "≥ 0", lambda v: v >= 0)
        self.draws = torch.zeros(self.buffer_size)  # times each slot was drawn in the task being trained

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """0: the "stream" term is the task's cross-entropy, on its own head."""
        return 0.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """The four terms; then the drawn examples' logits updated. Nothing enters the buffer during training."""
        units = ctx.scenario.task_units(ctx.task_idx)
        m = len(self.drawn[0]) if self.drawn else 0
        own = len(batch.y) - m * len(self.drawn)
        targets = ctx.scenario.targets(batch.y, batch.task_ids)
        terms = {"stream": F.cross_entropy(logits[:own, units], targets[:own] - units.start)}
        slots = torch.cat(self.drawn) if m else torch.zeros(0, dtype=torch.long)
        weights = [(name, w) for name, w in (("der_logits", self.alpha), ("der_labels", self.beta)) if w > 0]
        for i, (name, weight) in enumerate(weights[: len(self.drawn)]):
            rows = slice(own + i * m, own + (i + 1) * m)
            pick = self.drawn[i].to(self.buffer["y"].device)
            if name == "der_logits":
                stored, width = (self.buffer[key].index_select(0, pick).to(logits.device) for key in BUFFER_VIEW)
                terms[name] = weight * logit_mse(logits[rows], stored, width)
            else:
                terms[name] = weight * F.cross_entropy(logits[rows, : units.start], targets[rows])
        first = first_occurrences(slots)
        buffered = own + first.to(logits.device)
        if self.eta > 0 and units.stop < logits.shape[1]:
            rows = torch.cat([torch.arange(own, device=logits.device), buffered])
            terms["future"] = self.eta * self.future_constraint(ctx, logits[rows], batch.task_ids[rows], units.stop)
        if m:
            self.update_drawn(ctx, slots[first], logits[buffered].detach(), units.start)
        self.drawn = []
        return terms

    def future_constraint(self, ctx: TrainContext, logits: Tensor, task_ids: Tensor, n_seen: int) -> Tensor:
        """Mean over the rows where it is positive of max(future heads) + margin − max(own head); 0 if none is."""
        own_best = logits.masked_fill(~own_head(ctx.scenario, task_ids, logits.shape[1]), float("-inf")).max(1).values
        excess = logits[:, n_seen:].max(1).values + self.margin - own_best
        violated = (excess > 0).to(logits.dtype)
        return (excess * violated).sum() / violated.sum().clamp(min=1)

    def update_drawn(self, ctx: TrainContext, slots: Tensor, logits: Tensor, n_past: int) -> None:
        """Each drawn example of an earlier task counts a draw; with probability 1 / its draws its stored logits take
        the current and future heads' (`transplant`)."""
        device = self.buffer["y"].device
        slots = slots.to(device)
        earlier = (self.buffer["task_ids"][slots] < ctx.task_idx).cpu()
        self.draws[slots.cpu()[earlier]] += 1
        chosen = earlier & (torch.rand(len(slots), generator=ctx.generator, dtype=torch.float64)
                            * self.draws[slots.cpu()] < 1)
        if not chosen.any():
            return
        chosen_slots = slots[chosen.to(device)]
        self.write_logits(ctx, chosen_slots, logits[chosen.to(logits.device)].to(device), slice(n_past, None))

    def write_logits(self, ctx: TrainContext, slots: Tensor, current: Tensor, span: slice) -> None:
        """The buffered logits of `slots` with `span` transplanted from `current` (the head's width)."""
        self.fit_width(current.shape[1])
        stored = self.buffer["logits"][slots][:, : current.shape[1]]
        units = ctx.scenario.targets(self.buffer["y"][slots], self.buffer["task_ids"][slots])
        self.buffer["logits"][slots, : current.shape[1]] = transplant(stored, current, units, span, self.gamma)
        self.buffer["units"][slots] = current.shape[1]

    def fit_width(self, width: int) -> None:
        """The buffer's logits padded with zeros to the head's `width` (a head that grew)."""
        grow = width - self.buffer["logits"].shape[1]
        if grow > 0:
            self.buffer["logits"] = F.pad(self.buffer["logits"], (0, grow))

    def after_task(self, ctx: TrainContext) -> None:
        """The buffer's update at the task's end (the class docstring)."""
        t, units = ctx.task_idx, ctx.scenario.task_units(ctx.task_idx)
        was_training = ctx.model.training
        ctx.model.eval()
        with torch.no_grad():
            self.reduce(ctx, units.stop)
            self.add_task(ctx, units)
            earlier = (self.buffer["task_ids"][: self.seen] < t).nonzero().squeeze(1)
            if len(earlier):
                current = torch.cat([ctx.model(self.buffer["x"][earlier[i : i + FEATURE_BATCH_SIZE]])
                                     for i in range(0, len(earlier), FEATURE_BATCH_SIZE)])
                self.write_logits(ctx, earlier, current, slice(units.start, None))
        ctx.model.train(was_training)
        self.draws = torch.zeros(self.buffer_size)

    def reduce(self, ctx: TrainContext, n_seen: int) -> None:
        """Every class keeps the first ⌊buffer_size / n_seen⌋ of its buffered examples, moved to the front."""
        if not self.seen:
            return
        held = ctx.scenario.targets(self.buffer["y"][: self.seen], self.buffer["task_ids"][: self.seen])
        kept = (ranks_within(held, n_seen) < self.buffer_size // n_seen).nonzero().squeeze(1)
        for key, value in self.buffer.items():
            value[: len(kept)] = value[kept].clone()
        self.seen = len(kept)

    def add_task(self, ctx: TrainContext, units: slice) -> None:
        """The task's classes share the free slots; each takes the first of its examples in a random order, with the
        model's logits, past heads transplanted below the ground truth."""
        task = ctx.tasks[ctx.task_idx]
        n_new = units.stop - units.start
        free = self.buffer_size - self.seen
        quotas = torch.full((n_new,), free // n_new)
        quotas[torch.randperm(n_new, generator=ctx.generator)[: free - n_new * (free // n_new)]] += 1
        order = torch.randperm(len(task.train), generator=ctx.generator)
        labels = labels_and_features(ctx.model, task.train, with_features=False)[0][order]
        rows = order[ranks_within(labels, n_new) < quotas[labels]]
        x, y = task.train.gather(rows)
        logits = torch.cat([ctx.model(x[i : i + FEATURE_BATCH_SIZE]) for i in range(0, len(x), FEATURE_BATCH_SIZE)])
        task_ids = torch.full_like(y, ctx.task_idx)
        if units.start > 0:
            logits = transplant(logits, logits, ctx.scenario.targets(y, task_ids), slice(0, units.start), self.gamma)
        if not self.buffer:
            self.allocate(x, y, logits)
        self.fit_width(logits.shape[1])
        slots = torch.arange(self.seen, self.seen + len(y), device=self.buffer["y"].device)
        device = self.buffer["y"].device
        self.buffer["x"][slots] = x.to(device)
        self.buffer["y"][slots] = y.to(device)
        self.buffer["task_ids"][slots] = task_ids.to(device)
        self.buffer["logits"][slots, : logits.shape[1]] = logits.to(device)
        self.buffer["units"][slots] = logits.shape[1]
        self.seen += len(y)

    def allocate(self, x: Tensor, y: Tensor, logits: Tensor) -> None:
        n = self.buffer_size
        self.buffer = {"x": x.new_zeros((n, *x.shape[1:])), "y": y.new_zeros(n), "task_ids": y.new_zeros(n),
                       "logits": logits.new_zeros((n, logits.shape[1])),
                       "units": torch.zeros(n, dtype=torch.long, device=logits.device)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.draws = state.pop("draws", torch.zeros(self.buffer_size))
        super().load_state_dict(state)


def first_occurrences(slots: Tensor) -> Tensor:
    """Positions in `slots` of each value's first occurrence, in order."""
    if not len(slots):
        return slots
    positions = torch.arange(len(slots))
    first = torch.full((int(slots.max()) + 1,), len(slots)).scatter_reduce(0, slots, positions, reduce="amin")
    return (first[slots] == positions).nonzero().squeeze(1)
