"""Joint training: every task seen so far trained on together (the upper bound seed 003 reports)."""

from __future__ import annotations

from cl_bench.data.task import ConcatSplit
from cl_bench.methods.base import Method, TrainContext, TrainData


class Joint(Method):
    """Task k trains on the training splits of tasks 0..k at once; on the first task it is the baseline."""

    def train_data(self, ctx: TrainContext) -> TrainData:
        seen = list(range(ctx.task_idx + 1))
        split = ConcatSplit([ctx.tasks[t].train for t in seen], seen)
        return TrainData(split, split.task_ids)
