"""ER-ACE, experience replay with the asymmetric cross-entropy (Caccia, Aljundi, Asadi, Tuytelaars, Pineau &
Belilovsky 2022, "New Insights on Reducing Abrupt Representation Change in Online Continual Learning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.der import DER
from cl_bench.methods.params import flag, number
from cl_bench.models.cosine_head import CosineLinear

STATE_KEYS = {"buffer", "max_seen"}


def asymmetric_cross_entropy(logits: Tensor, units: Tensor, max_seen: Tensor) -> Tensor:
    """The mean cross-entropy of incoming examples (their output units `units`) over the units of the classes present
    in the batch and every unit from `max_seen` (the largest unit seen so far) on: the other classes seen before,
    absent from the batch, are masked out of the softmax (Caccia et al.'s L_ACE as Mammoth's er_ace.py writes it)."""
    all_units = torch.arange(logits.shape[1], device=logits.device)
    present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device).index_fill_(0, units, True)
    kept = present | (all_units >= max_seen)
    return F.cross_entropy(logits.masked_fill(~kept, float("-inf")), units)


class ERACE(Method):
    """L(θ) = L_ACE(incoming batch) + CE(replayed batch), as Mammoth's models/er_ace.py (and the authors' code,
    pclucas14/AML methods/er_ace.py) define it, class-IL.

    L_ACE (`asymmetric_cross_entropy`) is the incoming examples' cross-entropy with the logits of the classes seen
    before but absent from the batch masked out, so that new classes do not push the old ones' logits down; the
    replayed examples' cross-entropy spans every unit. The buffer is a reservoir over every incoming example (DER's,
    methods/der.py, without its logit terms: buffer_size, buffer_batch_size), drawn from uniformly without
    replacement. `task_free` (the authors' code forces it; Mammoth's default is false, its seq-cifar10 config sets
    it) masks and replays from the first task on; without it the first task trains with the plain cross-entropy
    and no replay. "ace" is the L_ACE term (the trainer's "task" term is weighted 0), "replay" the replayed one.

    `cosine_head`: the classifier is a cosine one without bias, scores `scale`·cos(φ(x), w_k) (models/cosine_head.py;
    the authors' distLinear, Mammoth's `use_custom_classifier`, default true, scale 10).
    """

    changes_first_task = True
    scenarios = ("class",)
    owns = frozenset({"batch", "head"})

    def __init__(
        self, buffer_size: int = 200, buffer_batch_size: int | None = None, task_free: bool = True,
        cosine_head: bool = True, scale: float = 10.0,
    ):
        self.buffer = DER(buffer_size, alpha=0.0, beta=1.0, buffer_batch_size=buffer_batch_size)
        self.task_free = flag("task_free", task_free)
        self.cosine_head = flag("cosine_head", cosine_head)
        self.scale = number("scale", scale, "> 0", lambda v: v > 0)
        self.max_seen: Tensor | None = None  # the largest output unit of an incoming example so far

    def head(self, linear: nn.Linear) -> nn.Module:
        if not self.cosine_head:
            return linear
        cosine = CosineLinear(linear.in_features, linear.out_features, self.scale)
        return cosine.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def replaying(self, ctx: TrainContext) -> bool:
        return self.task_free or ctx.task_idx > 0

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """0: the "ace" term replaces the cross-entropy of the incoming examples."""
        return 0.0

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        """The batch followed by `buffer_batch_size` buffered examples (none before replay starts)."""
        return self.buffer.extend_batch(ctx, batch) if self.replaying(ctx) else batch

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """L_ACE on the incoming examples ("ace"; their plain cross-entropy before replay starts) and the replayed
        examples' cross-entropy ("replay"); then the incoming examples enter the reservoir."""
        own = len(batch.y) - sum(len(drawn) for drawn in self.buffer.drawn)
        units = ctx.scenario.targets(batch.y[:own], batch.task_ids[:own])
        largest = units.max()
        self.max_seen = largest if self.max_seen is None else torch.maximum(self.max_seen, largest)
        if self.replaying(ctx):
            terms = {"ace": asymmetric_cross_entropy(logits[:own], units, self.max_seen)}
        else:
            terms = {"ace": F.cross_entropy(logits[:own], units)}
        replayed = self.buffer.loss_terms(ctx, batch, logits)  # and the reservoir takes the incoming examples
        if "der_labels" in replayed:
            terms["replay"] = replayed["der_labels"]
        return terms

    def state_dict(self) -> dict:
        state: dict = {"buffer": self.buffer.state_dict()}
        if self.max_seen is not None:
            state["max_seen"] = self.max_seen
        return state

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - STATE_KEYS
        if unknown:
            raise ValueError(f"ER-ACE checkpoint state has unknown keys {sorted(unknown)}")
        self.buffer.load_state_dict(state.get("buffer", {}))
        self.max_seen = state.get("max_seen")
