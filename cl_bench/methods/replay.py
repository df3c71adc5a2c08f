"""Experience replay from a fixed-size exemplar memory (Castro et al., End-to-End Incremental Learning, 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.core.errors import ConfigError
from cl_bench.data.task import ConcatSplit, Split, Task, TensorSplit
from cl_bench.methods.base import Batch, Method, TrainContext, TrainData
from cl_bench.methods.params import choice, count

SELECTIONS = ("random", "herding")
WEIGHTINGS = ("batch", "tasks_seen")
MEMORY_KEYS = ("x", "y", "task_ids", "rank")
# Examples per forward pass when computing a finished task's features (inference only).
FEATURE_BATCH_SIZE = 1024


def herding(features: Tensor, m: int) -> Tensor:
    """iCaRL's herding (Rebuffi et al. 2017): `m` row indices of `features`, in selection order, each chosen so that the
    running mean of the chosen L2-normalised features stays closest to the class mean."""
    phi = F.normalize(features, dim=1)
    mean = phi.mean(0)
    chosen_sum = torch.zeros_like(mean)
    available = torch.ones(len(phi), dtype=torch.bool, device=phi.device)
    chosen = []
    for k in range(1, min(m, len(phi)) + 1):
        distance = (mean - (chosen_sum + phi) / k).norm(dim=1).masked_fill(~available, float("inf"))
        pick = int(distance.argmin())
        chosen.append(pick)
        available[pick] = False
        chosen_sum += phi[pick]
    return torch.tensor(chosen, dtype=torch.long)


def labels_and_features(model: nn.Module, split: Split, with_features: bool) -> tuple[Tensor, Tensor | None]:
    """Every label of `split` (on the CPU) and, if asked, `model.features` of every example, computed
    in eval mode without gradients (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    labels, features = [], []
    with torch.inference_mode():
        for x, y in split.eval_batches(FEATURE_BATCH_SIZE):
            labels.append(y.cpu())
            if with_features:
                features.append(model.features(x).flatten(1))
    model.train(was_training)
    return torch.cat(labels), torch.cat(features) if with_features else None


def with_memory(data: TrainData, memory: dict[str, Tensor], task_idx: int) -> TrainData:
    """Task `task_idx`'s training data `data` followed by a memory's exemplars (each with its own task), one split:
    the training data of a method that appends its exemplars to the task's (End-to-End, LUCIR, BiC)."""
    if not memory:
        return data
    split = ConcatSplit([data.split, TensorSplit(memory["x"], memory["y"])], [task_idx, -1])
    return TrainData(split, torch.cat([data.task_ids, memory["task_ids"].cpu()]))


def check_memory_size(memory_size: int, tasks: list[Task]) -> None:
    """A ConfigError unless a memory of `memory_size` exemplars holds at least one of every class of `tasks`."""
    n_classes = sum(task.n_classes for task in tasks)
    if memory_size < n_classes:
        raise ConfigError(
            f"method.memory_size={memory_size}: smaller than the {n_classes} classes of the tasks; "
            f"each class needs at least one exemplar (choose at least {n_classes})"
        )


class Replay(Method):
    """L(θ) = w_task·CE(the task's examples) + w_replay·CE(replayed exemplars of earlier tasks), each CE
    the mean over its examples. Each batch gets `replay_batch_size` exemplars drawn uniformly from memory.

    The memory holds at most `memory_size` examples, ⌊memory_size / n⌋ per class over the n classes
    (a class being a task's label) seen so far: when a task ends its classes get their exemplars and
    the older classes keep only the first ⌊memory_size / n⌋ of theirs (iCaRL's reduction; herding's
    order puts the most representative first, random selection's order is random). Exemplars are
    the gathered inputs (pixel permutation applied) with their local labels and task ids.

    The exemplars' cross-entropy is the term "replay". `weighting=batch` weighs every example of
    the combined batch alike (the mean cross-entropy over the current and replayed examples, split
    into the "task" and "replay" terms by their counts); `tasks_seen` gives (1/t)·L_task +
    (1 − 1/t)·L_replay over the t tasks seen so far, each a mean over its own examples (van de Ven &
    Tolias).
    """

    selectable = ("memory_size",)
    owns = frozenset({"batch"})

    def __init__(
        self,
        memory_size: int = 200,
        selection: str = "random",
        replay_batch_size: int | None = None,
        weighting: str = "batch",
    ):
        self.memory_size = count("memory_size", memory_size)
        self.selection = choice("selection", selection, SELECTIONS)
        self.replay_batch_size = None if replay_batch_size is None else count("replay_batch_size", replay_batch_size)
        self.weighting = choice("weighting", weighting, WEIGHTINGS)
        self.memory: dict[str, Tensor] = {}

    def check(self, tasks: list[Task]) -> None:
        """The memory holds at least one exemplar of every class of `tasks`."""
        check_memory_size(self.memory_size, tasks)

    def share(self, tasks: list[Task]) -> int:
        """Exemplars per class once `tasks` are done (`check`'s error if there is not one for each)."""
        self.check(tasks)
        return self.memory_size // sum(task.n_classes for task in tasks)

    def after_task(self, ctx: TrainContext) -> None:
        """Shrink the old classes' exemplars to the new per-class share and add the task's."""
        per_class = self.share(ctx.tasks[: ctx.task_idx + 1])
        new = self._exemplars(ctx, per_class)
        if self.memory:
            kept = self.memory["rank"] < per_class
            new = {key: torch.cat([self.memory[key][kept], new[key].to(self.memory[key].device)]) for key in new}
        self.memory = new

    def _exemplars(self, ctx: TrainContext, per_class: int) -> dict[str, Tensor]:
        """Up to `per_class` exemplars of each class of the task just trained, in selection order."""
        task = ctx.tasks[ctx.task_idx]
        labels, features = labels_and_features(ctx.model, task.train, self.selection == "herding")
        picks = []
        for label in range(task.n_classes):
            members = (labels == label).nonzero().squeeze(1)
            if features is None:
                order = torch.randperm(len(members), generator=ctx.generator)[:per_class]
            else:
                order = herding(features[members.to(features.device)], per_class)
            picks.append(members[order])
        index = torch.cat(picks)
        x, y = task.train.gather(index)
        rank = torch.cat([torch.arange(len(p)) for p in picks]).to(y.device)
        return {"x": x, "y": y, "task_ids": torch.full_like(y, ctx.task_idx), "rank": rank}

    def replayed_count(self, ctx: TrainContext) -> int:
        """Exemplars added to each batch (0 while the memory is empty)."""
        return min(self.replay_batch_size or ctx.batch_size, len(self.memory["y"])) if self.memory else 0

    def _weights(self, ctx: TrainContext, own: int) -> tuple[float, float]:
        """(task weight, replay weight) of the two mean cross-entropies, `own` examples of the task
        and the replayed ones in a batch."""
        if self.weighting == "tasks_seen":
            t = ctx.task_idx + 1
            return 1 / t, 1 - 1 / t
        replayed = self.replayed_count(ctx)
        return own / (own + replayed), replayed / (own + replayed)

    def task_loss_weight(self, ctx: TrainContext) -> float:
        """Called once per task: a batch holds min(batch_size, split size) of the task's examples."""
        own = min(ctx.batch_size, len(ctx.data.split))
        return self._weights(ctx, own)[0] if self.memory else 1.0

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """The replayed examples' weighted mean cross-entropy (they follow the batch's own)."""
        replayed = self.replayed_count(ctx)
        if not replayed:
            return {}
        own = len(batch.y) - replayed
        loss = ctx.scenario.loss(logits[own:], batch.y[own:], batch.task_ids[own:])
        return {"replay": self._weights(ctx, own)[1] * loss}

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        """The batch followed by exemplars drawn uniformly without replacement (index -1)."""
        if not self.memory:
            return batch
        size = len(self.memory["y"])
        pick = torch.randperm(size, generator=ctx.generator)[: self.replayed_count(ctx)]
        pick = pick.to(self.memory["y"].device, non_blocking=True)
        x, y, task_ids = (self.memory[key].index_select(0, pick).to(batch.x.device) for key in ("x", "y", "task_ids"))
        return Batch(
            torch.cat([batch.x, x]),
            torch.cat([batch.y, y]),
            torch.cat([batch.task_ids, task_ids]),
            torch.cat([batch.index, torch.full_like(y, -1)]),
        )

    def state_dict(self) -> dict:
        return dict(self.memory)

    def load_state_dict(self, state: dict) -> None:
        if state and set(state) != set(MEMORY_KEYS):
            raise ValueError(f"Replay checkpoint state has keys {sorted(state)}, expected {list(MEMORY_KEYS)}")
        self.memory = dict(state)
