"""Several methods in one run: `method` and the methods listed in `plus` (`method=kd plus=[replay]`), each
with its own parameters under its own name (`method.kappa=2 plus.replay.memory_size=500`).

The rules that make a combination one well-defined method (docs/methods.md#combining-methods):
- Every hook runs for every part, in order: `method` first, then `plus` in the order listed.
- Loss terms (`loss_terms`, `penalty_values`): each part's, by its own names; two parts may not log the same name.
- The task's cross-entropy is weighted by the product of the parts' task weights (each part's other
  terms keep their own weights), so a part that weighs it 1/t (van de Ven & Tolias) does so in the combination.
- Gradient edits (`after_backward`): by `gradient_edit_order`, closed-form penalty gradients before
  projections (A-GEM), so a projection sees the gradient the optimiser takes; in list order within one order.
- At most one part may own each of what a run has one of (`Method.owns`, base.OWNABLE): the training data
  (joint training, End-to-End), the examples added to a batch (replay's), the prediction at evaluation
  (iCaRL's), the stages after a task's main steps (End-to-End's balanced fine-tuning), the model's restart
  per task and its output layer (LUCIR's cosine classifier). Two owners are refused before training; so is the
  same method twice.
- Examples added to the batch (replayed) are seen by their owner's terms; the others' terms see the
  task's own examples (distillation weighs added examples 0: a recorded teacher has no output for them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from cl_bench.core.errors import ConfigError
from cl_bench.data.task import Task
from cl_bench.methods.base import OWNABLE, Batch, Method, Stage, TrainContext, TrainData
from cl_bench.methods.params import under


class Combined(Method):
    """`parts` (config name → method, `method` first) trained as one method under the module's rules."""

    def __init__(self, parts: dict[str, Method]):
        check_combination(parts)
        self.parts = parts
        self.changes_first_task = any(part.changes_first_task for part in parts.values())
        self.owns = frozenset().union(*(part.owns for part in parts.values()))
        self.scenarios = tuple(s for s in Method.scenarios if all(s in part.scenarios for part in parts.values()))
        self.owners = {what: part for part in parts.values() for what in part.owns}
        self.gradient_editors = sorted(
            (part for part in parts.values() if part.runs("after_backward")), key=lambda m: m.gradient_edit_order
        )
        self.steppers = [part for part in parts.values() if part.runs("after_step")]
        self.n_own = 0  # examples of the task in the step's batch (extend_batch), before any added ones

    def runs(self, hook: str) -> bool:
        """A combination runs an optional hook when a part does."""
        return any(part.runs(hook) for part in self.parts.values())

    def train_data(self, ctx: TrainContext) -> TrainData:
        owner = self.owners.get("train_data")
        return owner.train_data(ctx) if owner else super().train_data(ctx)

    def check(self, tasks: list[Task]) -> None:
        """Each part's check, its errors naming its own keys (`plus.replay.memory_size`)."""
        for name, part in self.parts.items():
            try:
                part.check(tasks)
            except ConfigError as error:
                raise under(name, error) from None

    def before_task(self, ctx: TrainContext) -> None:
        for part in self.parts.values():
            part.before_task(ctx)

    def resume_task(self, ctx: TrainContext) -> None:
        for part in self.parts.values():
            part.resume_task(ctx)

    def task_loss_weight(self, ctx: TrainContext) -> float:
        weight = 1.0
        for part in self.parts.values():
            weight *= part.task_loss_weight(ctx)
        return weight

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        """The owner's extension; the batch's own examples are its first `n_own` (the trainer's rule)."""
        self.n_own = len(batch.y)
        owner = self.owners.get("batch")
        return owner.extend_batch(ctx, batch) if owner else batch

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> dict[str, Tensor]:
        """Every part's terms; a part that did not extend the batch sees only its own examples."""
        owner, n = self.owners.get("batch"), self.n_own
        own = (batch, logits) if n == len(batch.y) else (own_examples(batch, n), logits[:n])
        return _distinct_terms(
            (name, part.loss_terms(ctx, *((batch, logits) if part is owner else own)))
            for name, part in self.parts.items()
        )

    def after_backward(self, ctx: TrainContext) -> None:
        for part in self.gradient_editors:
            part.after_backward(ctx)

    def after_step(self, ctx: TrainContext) -> None:
        for part in self.steppers:
            part.after_step(ctx)

    def penalty_values(self, ctx: TrainContext) -> dict[str, Tensor]:
        return _distinct_terms((name, part.penalty_values(ctx)) for name, part in self.parts.items())

    def prediction_state(self) -> dict[str, Tensor]:
        owner = self.owners.get("prediction")
        return owner.prediction_state() if owner else {}

    def predictor(self, model: nn.Module, state: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        return self.owners["prediction"].predictor(model, state)

    def stages(self, ctx: TrainContext) -> list[Stage]:
        return self.owners["stages"].stages(ctx)

    def head(self, linear: nn.Linear) -> nn.Module:
        owner = self.owners.get("head")
        return owner.head(linear) if owner else linear

    def after_task(self, ctx: TrainContext) -> None:
        for part in self.parts.values():
            part.after_task(ctx)

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.parts):
            raise ValueError(f"the checkpoint holds the states of {sorted(state)}, this run combines {sorted(self.parts)}")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


def own_examples(batch: Batch, n: int) -> Batch:
    """The first `n` examples of `batch`: the task's own, before those a method added."""
    return Batch(batch.x[:n], batch.y[:n], batch.task_ids[:n], batch.index[:n])


def _distinct_terms(named_terms: Iterable[tuple[str, dict[str, Tensor]]]) -> dict[str, Tensor]:
    """The parts' terms in one dict (part name, its terms); a name two parts log is an error."""
    terms: dict[str, Tensor] = {}
    for name, part_terms in named_terms:
        for term, value in part_terms.items():
            if term in terms or term in ("task", "total"):
                raise RuntimeError(f"{name} logs the loss term {term!r}, which another part of the combination logs")
            terms[term] = value
    return terms


def check_combination(parts: dict[str, Method]) -> None:
    """ConfigError unless `parts` can run together under the module's rules."""
    seen: dict[type, str] = {}
    for name, part in parts.items():
        if type(part) in seen:
            raise ConfigError(f"{seen[type(part)]} and {name} are both {type(part).__name__}: combine a method once")
        seen[type(part)] = name
    for owned, (_, what) in OWNABLE.items():
        owners = [name for name, part in parts.items() if owned in part.owns]
        if len(owners) > 1:
            raise ConfigError(f"{owners[0]} and {owners[1]} both {what}: combine at most one such method")
    restarting = [name for name, part in parts.items() if "model" in part.owns]
    if restarting and len(parts) > 1:
        raise ConfigError(f"{restarting[0]} restarts the model at every task: it cannot be combined with other methods")
    scenarios = [s for s in Method.scenarios if all(s in part.scenarios for part in parts.values())]
    if not scenarios:
        raise ConfigError(f"{' and '.join(parts)} are defined in no common scenario: they cannot be combined")
