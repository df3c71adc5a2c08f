"""Batched, gradient-free accuracy of a model on every task of a sequence.

Each evaluation gives the scenario's accuracy (the argmax over the units the scenario allows:
every unit in class-IL) and, in class-IL, also the task-aware one (the argmax within the task's own
units, as Mammoth reports Task-IL beside Class-IL), from the same forward pass."""

from __future__ import annotations

import math

import torch
from torch import nn

from cl_bench.data.task import Task
from cl_bench.engine.scenario import Scenario

SCENARIO, TASK_AWARE = "scenario", "task_aware"
ACCURACIES = (SCENARIO, TASK_AWARE)
# The metrics-row prefix of each accuracy: val/<task>, val_task_aware/<task>.
ROW_PREFIX = {SCENARIO: "", TASK_AWARE: "_task_aware"}


def accuracy_kinds(scenario: Scenario) -> tuple[str, ...]:
    """The accuracies a scenario measures: class-IL both, the others their own."""
    return ACCURACIES if scenario.name == "class" else (SCENARIO,)


def accuracy(model: nn.Module, task: Task, task_idx: int, split: str, scenario: Scenario, batch_size: int) -> dict[str, float]:
    """Fraction of `task`'s `split` examples whose predicted unit is their label's, by accuracy kind;
    NaN when the head has no units for the task yet."""
    kinds = accuracy_kinds(scenario)
    if not scenario.evaluable(task_idx, model.head.out_features):
        return {kind: math.nan for kind in kinds}
    correct = {kind: None for kind in kinds}
    total = 0
    for x, y in getattr(task, split).eval_batches(batch_size):
        logits = model(x)
        targets = scenario.targets(y, torch.full_like(y, task_idx))
        for kind in kinds:
            predicted = scenario.predict(logits, task_idx, task_aware=kind == TASK_AWARE)
            hits = (predicted == targets).sum()
            correct[kind] = hits if correct[kind] is None else correct[kind] + hits
        total += len(y)
    return {kind: float(hits) / total for kind, hits in correct.items()}


def accuracies(
    model: nn.Module, tasks: list[Task], split: str, scenario: Scenario, batch_size: int
) -> dict[str, list[float]]:
    """Every task's accuracies on `split` by kind, the model in eval mode under inference_mode, mode restored."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        per_task = [accuracy(model, task, k, split, scenario, batch_size) for k, task in enumerate(tasks)]
    model.train(was_training)
    return {kind: [result[kind] for result in per_task] for kind in accuracy_kinds(scenario)}
