"""The accuracies an evaluation measures: the scenario's (the argmax over the units the scenario allows: every
unit in class-IL) and, in class-IL, the task-aware one (the argmax within the task's own units, as Mammoth
reports Task-IL beside Class-IL)."""

from __future__ import annotations

SCENARIO, TASK_AWARE = "scenario", "task_aware"
ACCURACIES = (SCENARIO, TASK_AWARE)
# The metrics-row prefix of each accuracy: val/<task>, val_task_aware/<task>.
ROW_PREFIX = {SCENARIO: "", TASK_AWARE: "_task_aware"}


def accuracy_kinds(scenario_name: str) -> tuple[str, ...]:
    """The accuracies a scenario measures: class-IL both, the others their own."""
    return ACCURACIES if scenario_name == "class" else (SCENARIO,)
