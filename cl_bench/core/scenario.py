"""Scenarios after van de Ven & Tolias: how tasks share the output layer, the loss and evaluation.

- ``task``: each task owns a range of output units; the task is known, so the loss and the
  prediction use only that range (a multi-head network written as one masked head).
- ``domain``: one shared head and label space for every task.
- ``class``: one head that grows by each task's classes; softmax over every class seen so far.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.core.errors import ConfigError

SCENARIOS = ("task", "domain", "class")
# Class-IL's head: `grow` adds a task's units when it starts (van de Ven & Tolias); `full` has every class's
# unit from the first task on, trained and predicted over all of them (Mammoth, Buzzega et al. 2020).
CLASS_HEADS = ("grow", "full")


def check_scenario(name: str) -> None:
    """`scenario` is one of SCENARIOS (validate.py checks the config with it before anything is built)."""
    if name not in SCENARIOS:
        raise ConfigError(f"scenario={name!r}: choose one of {', '.join(SCENARIOS)}")


class Scenario:
    def __init__(self, name: str, classes_per_task: list[int], class_head: str = "grow"):
        check_scenario(name)
        self.name = name
        self.full_head = name == "class" and class_head == "full"
        self.classes_per_task = list(classes_per_task)
        starts = [0]
        for n in self.classes_per_task:
            starts.append(starts[-1] + n)
        self._starts = starts
        shared = name == "domain"
        self.offsets = torch.tensor([0] * len(classes_per_task) if shared else starts[:-1])
        owner = [t for t, n in enumerate(self.classes_per_task) for _ in range(n)]
        self._unit_owner = torch.tensor(owner)
        self._copies: dict[tuple[str, torch.device], Tensor] = {}

    def _on(self, table: str, device: torch.device) -> Tensor:
        """The host table `table` (offsets, _unit_owner) on `device`: copied once, not at every loss (a blocking
        copy to a GPU at every step)."""
        if (table, device) not in self._copies:
            self._copies[table, device] = getattr(self, table).to(device)
        return self._copies[table, device]

    @property
    def shared_head(self) -> bool:
        return self.name == "domain"

    def n_outputs(self, task_idx: int) -> int:
        """Size of the head while training task `task_idx`."""
        if self.shared_head:
            return max(self.classes_per_task)
        return self._starts[-1] if self.full_head else self._starts[task_idx + 1]

    def task_units(self, task_idx: int) -> slice:
        """The output units that task `task_idx`'s labels map to."""
        if self.shared_head:
            return slice(0, self.classes_per_task[task_idx])
        return slice(self._starts[task_idx], self._starts[task_idx + 1])

    def old_output_groups(self, task_idx: int) -> list[slice]:
        """Output units of the tasks before `task_idx`, grouped as their softmax normalises them."""
        if task_idx == 0:
            return []
        if self.shared_head:
            return [slice(0, self.n_outputs(task_idx - 1))]
        if self.name == "class":
            return [slice(0, self._starts[task_idx])]
        return [self.task_units(t) for t in range(task_idx)]

    def units_existing_before(self, task_idx: int) -> int:
        """Head rows that existed when task `task_idx - 1` ended (rows added later carry no penalty)."""
        return self.n_outputs(task_idx - 1) if task_idx > 0 else 0

    def targets(self, y: Tensor, task_ids: Tensor) -> Tensor:
        """Output-unit index of each example's label."""
        if self.shared_head:
            return y
        return y + self._on("offsets", y.device)[task_ids]

    def task_of_unit(self, units: Tensor) -> Tensor:
        """The task whose label each output unit of `units` is (class- and task-IL; in domain-IL every task shares
        the units, and this names the first)."""
        if self.shared_head:
            return torch.zeros_like(units)
        return self._unit_owner.to(units.device)[units]

    def restrict(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """Logits with the units a scenario does not allow for each example set to -inf (task-IL)."""
        if self.name != "task":
            return logits
        owner = self._on("_unit_owner", logits.device)[: logits.shape[1]]
        return logits.masked_fill(owner[None, :] != task_ids[:, None], float("-inf"))

    def loss(self, logits: Tensor, y: Tensor, task_ids: Tensor) -> Tensor:
        """Mean cross-entropy of the examples' labels under the scenario's softmax."""
        return F.cross_entropy(self.restrict(logits, task_ids), self.targets(y, task_ids))

    def predict(self, logits: Tensor, task_idx: int, task_aware: bool = False) -> Tensor:
        """Predicted output unit for examples of task `task_idx`: within the task's own units in
        task-IL (and when `task_aware`), else over the whole head."""
        if self.name == "task" or task_aware:
            units = self.task_units(task_idx)
            return logits[:, units].argmax(1) + units.start
        return logits.argmax(1)

    def units_predicted_among(self, task_idx: int, task_aware: bool = False) -> int:
        """How many output units `predict` chooses among for task `task_idx`'s examples once every task's units
        exist: the task's own in task-IL (and when `task_aware`), else the whole head."""
        if self.name == "task" or task_aware:
            units = self.task_units(task_idx)
            return units.stop - units.start
        return self.n_outputs(len(self.classes_per_task) - 1)

    def evaluable(self, task_idx: int, head_size: int) -> bool:
        """Whether the head has the units for task `task_idx` yet (class/task-IL grow it)."""
        return self.task_units(task_idx).stop <= head_size
