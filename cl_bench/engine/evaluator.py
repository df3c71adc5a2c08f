"""Evaluation during training: every task's val and test accuracies of the model, each model state
evaluated once, and the Score's best point (results/metrics.py): a snapshot of the model there and
that model's test accuracies."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cl_bench.data.task import Task
from cl_bench.engine.evaluation import accuracies
from cl_bench.engine.scenario import Scenario
from cl_bench.methods.base import Method
from cl_bench.results.metrics import in_score_window, new_peak

Accuracies = dict[str, list[float]]  # every task's accuracy, by accuracy kind (evaluation.py)


class EvaluationCache:
    """Accuracies of the model state evaluated last, by split. Evaluating an unchanged state again
    (a task's step 0 right after the previous task's end when the head does not grow; the test
    split of the Score's model when that model is a task's end) reads them back: evaluation is
    deterministic, so the values are those a new evaluation would give."""

    def __init__(self) -> None:
        self.state: dict[str, Tensor] | None = None
        self.results: dict[str, Accuracies] = {}

    def accuracies(self, state: dict[str, Tensor], split: str, compute: Callable[[], Accuracies]) -> Accuracies:
        """`split`'s accuracies under `state`, computed only if this state's are not held yet."""
        if self.state is None or not same_state(self.state, state):
            self.state, self.results = {k: v.detach().clone() for k, v in state.items()}, {}
        if split not in self.results:
            self.results[split] = compute()
        return {kind: list(values) for kind, values in self.results[split].items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Whether two state dicts hold the same keys, shapes and values (NaN equals nothing)."""
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


class Evaluator:
    """Evaluates models on every task of `tasks` under `autocast`, in batches of `batch_size`, and
    follows the Score (of the `accuracy` kind) over the val evaluations: `last_val` holds the latest,
    `best` the peak mean of the Score's window so far and a snapshot of the model there."""

    def __init__(
        self,
        tasks: list[Task],
        scenario: Scenario,
        batch_size: int,
        autocast: torch.autocast | contextlib.nullcontext,
        accuracy: str,
        method: Method,
    ):
        self.tasks = tasks
        self.scenario = scenario
        self.batch_size = batch_size
        self.autocast = autocast
        self.accuracy = accuracy
        self.method = method  # its `predictor` and `prediction_state` (methods/base.py)
        self.cache = EvaluationCache()
        self.last_val: Accuracies = {}
        self.best: tuple[float, dict[str, Tensor]] | None = None
        self.best_results: dict[str, Accuracies] = {}  # the cache's results of the best state, by split

    def val(self, model: nn.Module, task_idx: int) -> Accuracies:
        """The val accuracies of `model` while training task `task_idx`; a new peak of the Score's
        window keeps the model's snapshot."""
        self.last_val = self._accuracies(model, "val")
        if in_score_window(task_idx, len(self.tasks)):
            mean = new_peak(self.last_val[self.accuracy], None if self.best is None else self.best[0])
            if mean is not None:
                self.best = (mean, self.cache.state)  # the cache's snapshot of this very state
                self.best_results = self.cache.results
        return self.last_val

    def test(self, model: nn.Module) -> Accuracies:
        """The test accuracies of `model`."""
        return self._accuracies(model, "test")

    def best_test(self, model: nn.Module) -> Accuracies:
        """Test accuracies of the model at the Score's point (those of a task's end when the model
        did not change from that point to the task's end); `model` lends its architecture."""
        if "test" in self.best_results:
            return {kind: list(values) for kind, values in self.best_results["test"].items()}
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(self.best[1])
        return self._accuracies(best_model, "test")

    def _accuracies(self, model: nn.Module, split: str) -> Accuracies:
        with self.autocast:
            return self.cache.accuracies(
                model.state_dict(), split, lambda: accuracies(model, self.tasks, split, self.scenario, self.batch_size)
            )

    def state_dict(self) -> dict:
        """The latest val accuracies and the best point (its mean and model state)."""
        best = None if self.best is None else {"mean": self.best[0], "model": self.best[1]}
        return {"last_val": self.last_val, "best": best}

    def load_state_dict(self, state: dict) -> None:
        self.last_val = state["last_val"]
        self.best = None if state["best"] is None else (state["best"]["mean"], state["best"]["model"])
        self.best_results = {}
