"""Dark Experience Replay, DER and DER++ (Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience
for General Continual Learning: a Strong, Simple Baseline")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.params import count, number

BUFFER_KEYS = ("x", "y", "task_ids", "logits", "units")


def reservoir_slots(seen: int, n: int, size: int, generator: torch.Generator) -> Tensor:
    """Vitter's algorithm R over `n` examples arriving after `seen` others: the buffer slot each one is written
    to, -1 if it is not kept. The k-th example overall (0-based) takes slot k while k < size, else a slot drawn
    uniformly from [0, k], kept if < size (so with probability size / (k + 1)). One draw per example."""
    position = torch.arange(seen, seen + n)
    draw = (torch.rand(n, generator=generator, dtype=torch.float64) * (position + 1)).long()
    return torch.where(position < size, position, torch.where(draw < size, draw, -1))


def last_writes(slots: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """(slots written, the example written to each): where several examples of a batch take one slot the
    latest wins, as when they are inserted one after another."""
    order = torch.arange(len(slots))
    kept = slots >= 0
    winner = torch.full((size,), -1).scatter_reduce_(0, slots[kept], order[kept], reduce="amax")
    target = (winner >= 0).nonzero().squeeze(1)
    return target, winner[target]


def logit_mse(outputs: Tensor, stored: Tensor, units: Tensor) -> Tensor:
    """Mean of (f(x)_j − z_j)² over every example and each of its stored units j < units (the stored logits'
    width when inserted; `stored` is zero beyond it). With one width for all, F.mse_loss(f(x), z)."""
    width = stored.shape[1]
    mask = torch.arange(width, device=units.device)[None, :] < units[:, None]
    return ((outputs[:, :width] - stored).square() * mask).sum() / mask.sum()


class DER(Method):
    """L(θ) = L_task + α·MSE(f(x'), z') + β·CE(f(x''), y''), Buzzega et al.'s DER++ (eq. 6; DER, eq. 4, is β = 0).

    A reservoir buffer of `buffer_size` examples (Vitter's algorithm R over every training example seen, task
    A's included, with the method generator) holds inputs x (as the model saw them), labels y, task ids and
    z, the logits the model gave them in the training forward pass of the step that saw them (detached).
    Each batch gets `buffer_batch_size` (null: batch_size) buffered examples for the α term and, for β > 0,
    a second independent draw for the β term, each uniform without replacement, appended after the batch's
    own (index -1) so that one forward pass (in train mode: BatchNorm sees the whole extended batch;
    Mammoth runs a pass per draw) gives every logit.

    der_logits = α·MSE: the mean over the drawn examples and their stored units. Mammoth's head is fixed-size;
    ours grows with each task in class- and task-IL, so an example stored while the head had k units is
    compared on those k (the leading k of the current head); in domain-IL every unit. der_labels =
    β·CE under the scenario's softmax with the examples' own task ids (as the task loss).

    The step's own examples enter the buffer in `loss_terms`, after both terms are computed from the draws
    of `extend_batch`: the draws see the buffer as it was before the step, as in Mammoth, which inserts
    after the optimiser step with the forward pass's logits. The buffer fills during task A, so DER trains
    task A itself (never from the task-A cache).

    A report selects α by validation; not β, so that DER (β = 0) and DER++ stay rows of their own
    (`report.select=[method.beta]` selects it too).
    """

    changes_first_task = True
    selectable = ("alpha",)
    owns = frozenset({"batch"})

    def __init__(self, buffer_size: int = 200, alpha: float = 0.2, beta: float = 0.0, buffer_batch_size: int | None = None):
        self.buffer_size = count("buffer_size", buffer_size)
        self.alpha = number("alpha", alpha, "≥ 0", lambda v: v >= 0)
        self.beta = number("beta", beta, "≥ 0", lambda v: v >= 0)
        self.buffer_batch_size = None if buffer_batch_size is None else count("buffer_batch_size", buffer_batch_size)
        self.buffer: dict[str, Tensor] = {}
        self.seen = 0  # training examples offered to the reservoir so far
        self.drawn: list[Tensor] = []  # the buffer slots of this step's draws, from extend_batch to loss_terms

    def drawn_count(self, ctx: TrainContext) -> int:
        """Examples in each draw from the buffer (0 while it is empty)."""
        return min(self.buffer_batch_size or ctx.batch_size, self.seen, self.buffer_size)

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        """The batch followed by the α draw (if α > 0) and the β draw (if β > 0) from the buffer."""
        m = self.drawn_count(ctx)
        filled = min(self.seen, self.buffer_size)
        weights = [w for w in (self.alpha, self.beta) if w > 0]
        self.drawn = [torch.randperm(filled, generator=ctx.generator)[:m] for _ in weights] if m else []
        if not self.drawn:
            return batch
        pick = torch.cat(self.drawn).to(self.buffer["y"].device, non_blocking=True)
        x, y, task_ids = (self.buffer[key].index_select(0, pick).to(batch.x.device) for key in ("x", "y", "task_ids"))
        return Batch(
            torch.cat([batch.x, x]),
            torch.cat([batch.y, y]),
            torch.cat([batch.task_ids, task_ids]),
            torch.cat([batch.index, torch.full_like(y, -1)]),
        )

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """α·MSE on the α draw's stored logits ("der_logits") and β·CE on the β draw's labels ("der_labels");
        then the batch's own examples enter the buffer with their logits."""
        m = len(self.drawn[0]) if self.drawn else 0
        own = len(batch.y) - m * len(self.drawn)
        terms, start = {}, own
        if m and self.alpha > 0:
            pick = self.drawn[0].to(self.buffer["units"].device, non_blocking=True)
            stored, units = (self.buffer[key].index_select(0, pick).to(logits.device) for key in ("logits", "units"))
            terms["der_logits"] = self.alpha * logit_mse(logits[start : start + m], stored, units)
            start += m
        if m and self.beta > 0:
            rows = slice(start, start + m)
            terms["der_labels"] = self.beta * ctx.scenario.loss(logits[rows], batch.y[rows], batch.task_ids[rows])
        self.drawn = []
        self.insert(ctx.generator, batch.x[:own], batch.y[:own], batch.task_ids[:own], logits[:own].detach())
        return terms

    def insert(self, generator: torch.Generator, x: Tensor, y: Tensor, task_ids: Tensor, logits: Tensor) -> None:
        """Offer a batch of examples with their logits to the reservoir."""
        if not self.buffer:
            n = self.buffer_size
            self.buffer = {
                "x": x.new_zeros((n, *x.shape[1:])),
                "y": y.new_zeros(n),
                "task_ids": task_ids.new_zeros(n),
                "logits": logits.new_zeros((n, logits.shape[1])),
                "units": torch.zeros(n, dtype=torch.long, device=logits.device),
            }
        grow = logits.shape[1] - self.buffer["logits"].shape[1]
        if grow > 0:  # the head grew: older logits keep their width in `units`, zeros beyond it
            self.buffer["logits"] = F.pad(self.buffer["logits"], (0, grow))
        slots = reservoir_slots(self.seen, len(y), self.buffer_size, generator)
        self.seen += len(y)
        target, source = last_writes(slots, self.buffer_size)
        if not len(target):
            return
        device = self.buffer["y"].device
        target, source = target.to(device, non_blocking=True), source.to(device, non_blocking=True)
        self.buffer["x"][target] = x[source]
        self.buffer["y"][target] = y[source]
        self.buffer["task_ids"][target] = task_ids[source]
        self.buffer["logits"][target] = F.pad(logits[source], (0, self.buffer["logits"].shape[1] - logits.shape[1]))
        self.buffer["units"][target] = logits.shape[1]

    def state_dict(self) -> dict:
        return {"seen": self.seen, **self.buffer}

    def load_state_dict(self, state: dict) -> None:
        buffer = {key: value for key, value in state.items() if key != "seen"}
        if buffer and set(buffer) != set(BUFFER_KEYS):
            raise ValueError(f"DER checkpoint state has keys {sorted(buffer)}, expected {list(BUFFER_KEYS)}")
        self.seen, self.buffer, self.drawn = int(state.get("seen", 0)), buffer, []
