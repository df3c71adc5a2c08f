"""Batched, gradient-free accuracy of a model on every task of a sequence.

Each evaluation gives the scenario's accuracy (the argmax over the units the scenario allows:
every unit in class-IL) and, in class-IL, also the task-aware one (the argmax within the task's own
units, as Mammoth reports Task-IL beside Class-IL), from the same forward pass."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cl_bench.core.accuracy import TASK_AWARE, accuracy_kinds
from cl_bench.core.scenario import Scenario
from cl_bench.data.task import Task

# A batch of inputs → one score per output unit (the argmax is the prediction).
Predict = Callable[[Tensor], Tensor]


def accuracy(
    model: nn.Module, task: Task, task_idx: int, split: str, scenario: Scenario, batch_size: int,
    predict: Predict | None = None,
) -> dict[str, float]:
    """Fraction of `task`'s `split` examples whose predicted unit is their label's, by accuracy kind, the
    scores being `predict`'s (default: `model`'s logits); NaN when the head has no units for the task yet."""
    kinds = accuracy_kinds(scenario.name)
    if not scenario.evaluable(task_idx, model.head.out_features):
        return {kind: math.nan for kind in kinds}
    predict = model if predict is None else predict
    correct = {kind: None for kind in kinds}
    total = 0
    for x, y in getattr(task, split).eval_batches(batch_size):
        scores = predict(x)
        targets = scenario.targets(y, torch.full_like(y, task_idx))
        for kind in kinds:
            predicted = scenario.predict(scores, task_idx, task_aware=kind == TASK_AWARE)
            hits = (predicted == targets).sum()
            correct[kind] = hits if correct[kind] is None else correct[kind] + hits
        total += len(y)
    return {kind: float(hits) / total for kind, hits in correct.items()}


def accuracies(
    model: nn.Module, tasks: list[Task], split: str, scenario: Scenario, batch_size: int,
    predictor: Callable[[], Predict] | None = None,
) -> dict[str, list[float]]:
    """Every task's accuracies on `split` by kind, the model in eval mode under inference_mode, mode restored;
    `predictor()`, when given, builds the scores' function once (in that mode) for every task's batches."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        predict = None if predictor is None else predictor()
        per_task = [accuracy(model, task, k, split, scenario, batch_size, predict) for k, task in enumerate(tasks)]
    model.train(was_training)
    return {kind: [result[kind] for result in per_task] for kind in accuracy_kinds(scenario.name)}
