"""The saved form of a run's state (a checkpoint, a task-A cache entry): one dict of tensors and plain values
holding the loop's position (`next_task`, `global_step`, `rows_logged`), `model`, `method`, the random streams
(`rng`, `sampler_rng`, `method_rng`), `result`, the evaluator's (`last_val`, `best`), `optimizer`, and `task`:
where the task being trained is (SavedTask), or None between tasks. The trainer writes and reads it
(Trainer.state_dict, Trainer.load_state_dict)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cl_bench.core.state_format import STATE_FORMAT, IncompatibleState


@dataclass
class SavedTask:
    """Where the task being trained is: its step, the loss sums since the last evaluation (`since` steps, and
    whether one was non-finite), the sampler state its main steps' batches were drawn from; inside a method's
    stage (Method.stages) also the stage and the sampler state of its batches."""

    task_idx: int
    step: int
    since: int
    sums: dict[str, Tensor]
    nonfinite: Tensor
    sampler_state: Tensor
    stage: int = 0
    stage_sampler_state: Tensor | None = None

    def to_state(self) -> dict:
        """The saved dict (a task in its main steps is saved without the stage's keys)."""
        state = {"task_idx": self.task_idx, "step": self.step, "since": self.since, "sums": self.sums,
                 "nonfinite": self.nonfinite, "sampler_state": self.sampler_state}
        if self.stage > 0:
            state.update(stage=self.stage, stage_sampler_state=self.stage_sampler_state)
        return state

    @classmethod
    def from_state(cls, state: dict) -> SavedTask:
        return cls(state["task_idx"], state["step"], state["since"], state["sums"], state["nonfinite"],
                   state["sampler_state"], state.get("stage", 0), state.get("stage_sampler_state"))


def check_format(state: dict) -> None:
    """IncompatibleState unless `state` was written in the format this cl_bench writes."""
    if state.get("format") != STATE_FORMAT:
        raise IncompatibleState(
            f"this state was written by cl_bench {state.get('format', '0.1 or older')}, whose settings meant "
            f"something else (CHANGELOG.md); cl_bench {STATE_FORMAT} does not continue it: start a new run folder"
        )
