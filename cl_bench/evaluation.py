"""Batched, gradient-free accuracy of a model on every task of a sequence."""

from __future__ import annotations

import math

import torch
from torch import nn

from cl_bench.data.task import Task
from cl_bench.scenario import Scenario


def accuracy(model: nn.Module, task: Task, task_idx: int, split: str, scenario: Scenario, batch_size: int) -> float:
    """Fraction of `task`'s `split` examples whose predicted unit is their label's; NaN when the
    head has no units for the task yet."""
    if not scenario.evaluable(task_idx, model.head.out_features):
        return math.nan
    correct = None
    total = 0
    for x, y in getattr(task, split).eval_batches(batch_size):
        task_ids = torch.full_like(y, task_idx)
        hits = (scenario.predict(model(x), task_idx) == scenario.targets(y, task_ids)).sum()
        correct = hits if correct is None else correct + hits
        total += len(y)
    return float(correct) / total


def accuracies(model: nn.Module, tasks: list[Task], split: str, scenario: Scenario, batch_size: int) -> list[float]:
    """Accuracy on every task's `split`, the model in eval mode under inference_mode, mode restored."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        result = [accuracy(model, task, k, split, scenario, batch_size) for k, task in enumerate(tasks)]
    model.train(was_training)
    return result
