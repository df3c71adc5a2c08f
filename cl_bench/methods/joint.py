"""Joint training: every task seen so far trained on together (the upper bound the split-MNIST EWC
tutorial and van de Ven & Tolias report)."""

from __future__ import annotations

from cl_bench.data.task import ConcatSplit
from cl_bench.methods.base import Method, TrainContext, TrainData
from cl_bench.methods.params import flag


class Joint(Method):
    """Task k trains on the training splits of tasks 0..k at once; on the first task it is the baseline.

    `restart=false` continues the model from task to task (van de Ven & Tolias's "Offline");
    `restart=true` trains a fresh model (new initialisation, new optimiser) on the union at every
    task after the first: with two tasks, the tutorial's multi-task model trained on A∪B.
    """

    def __init__(self, restart: bool = False):
        self.owns = frozenset({"train_data", "model"} if flag("restart", restart) else {"train_data"})

    def train_data(self, ctx: TrainContext) -> TrainData:
        seen = list(range(ctx.task_idx + 1))
        split = ConcatSplit([ctx.tasks[t].train for t in seen], seen)
        return TrainData(split, split.task_ids)
