"""Evaluation during training: every task's val and test accuracies of the model, each state evaluated
once, and the Score's best point (core/score.py): a snapshot of the state there and its test
accuracies. A state is the model's weights and, for a method that replaces the prediction (methods/base.py
`Method.predictor`, e.g. iCaRL's nearest-mean-of-exemplars), its `prediction_state()`: two evaluations
share results only if both are equal, and the best point's snapshot holds both."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cl_bench.core.scenario import Scenario
from cl_bench.core.score import in_score_window, new_peak
from cl_bench.data.task import Task
from cl_bench.engine.evaluation import accuracies
from cl_bench.methods.base import Method, defined_hook

Accuracies = dict[str, list[float]]  # every task's accuracy, by accuracy kind (evaluation.py)
NO_PREDICTION_STATE: dict[str, Tensor] = {}  # the prediction state of a method that predicts with the logits


@dataclass(frozen=True)
class Snapshot:
    """What an evaluation's results depend on: the model's weights and the method's prediction state."""

    weights: dict[str, Tensor]
    prediction: dict[str, Tensor]

    @classmethod
    def copy_of(cls, weights: dict[str, Tensor], prediction: dict[str, Tensor]) -> Snapshot:
        clone = lambda state: {k: v.detach().clone() for k, v in state.items()}
        return cls(clone(weights), clone(prediction))

    def holds(self, weights: dict[str, Tensor], prediction: dict[str, Tensor]) -> bool:
        return same_state(self.weights, weights) and same_state(self.prediction, prediction)


class EvaluationCache:
    """Accuracies of the state evaluated last, by split. Evaluating an unchanged state again (a task's
    step 0 right after the previous task's end when the head does not grow; the test split of the
    Score's model when that model is a task's end) reads them back: evaluation is deterministic, so the
    values are those a new evaluation would give."""

    def __init__(self) -> None:
        self.state: Snapshot | None = None
        self.results: dict[str, Accuracies] = {}

    def accuracies(
        self, weights: dict[str, Tensor], prediction: dict[str, Tensor], split: str, compute: Callable[[], Accuracies]
    ) -> Accuracies:
        """`split`'s accuracies under `weights` and `prediction`, computed only if this state's are not held yet."""
        if self.state is None or not self.state.holds(weights, prediction):
            self.state, self.results = Snapshot.copy_of(weights, prediction), {}
        if split not in self.results:
            self.results[split] = compute()
        return {kind: list(values) for kind, values in self.results[split].items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Whether two state dicts hold the same keys, shapes and values (NaN equals nothing)."""
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


class Evaluator:
    """Evaluates models on every task of `tasks` under `autocast`, in batches of `batch_size`, with
    `method`'s predictor if it defines one (built once per split's evaluation), and follows the Score (of
    the `accuracy` kind, over its `window`: core/score.py) over the val evaluations: `last_val` holds the
    latest, `best` the peak mean of the Score's window so far and a snapshot of the state there."""

    def __init__(
        self,
        tasks: list[Task],
        scenario: Scenario,
        batch_size: int,
        autocast: torch.autocast | contextlib.nullcontext,
        accuracy: str,
        window: str,
        method: Method,
    ):
        self.tasks = tasks
        self.scenario = scenario
        self.batch_size = batch_size
        self.autocast = autocast
        self.accuracy = accuracy
        self.window = window
        self.method = method
        self.predictor = defined_hook(method, "predictor")  # None: the logits, and no prediction state
        self.cache = EvaluationCache()
        self.last_val: Accuracies = {}
        self.best: tuple[float, Snapshot] | None = None
        self.best_results: dict[str, Accuracies] = {}  # the cache's results of the best state, by split

    def val(self, model: nn.Module, task_idx: int, task_step: int) -> Accuracies:
        """The val accuracies of `model` at step `task_step` of task `task_idx`; a new peak of the Score's
        window keeps the state's snapshot."""
        self.last_val = self._accuracies(model, "val")
        if in_score_window(task_idx, task_step, len(self.tasks), self.window):
            mean = new_peak(self.last_val[self.accuracy], None if self.best is None else self.best[0])
            if mean is not None:
                self.best = (mean, self.cache.state)  # the cache's snapshot of this very state
                self.best_results = self.cache.results
        return self.last_val

    def test(self, model: nn.Module) -> Accuracies:
        """The test accuracies of `model`."""
        return self._accuracies(model, "test")

    def best_test(self, model: nn.Module) -> Accuracies:
        """Test accuracies of the state at the Score's point (those of a task's end when the state did
        not change from that point to the task's end): the snapshot's weights in a copy of `model` (which
        lends its architecture), predicting with the snapshot's prediction state."""
        if "test" in self.best_results:
            return {kind: list(values) for kind, values in self.best_results["test"].items()}
        snapshot = self.best[1]
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(snapshot.weights)
        return self._accuracies(best_model, "test", snapshot.prediction)

    def _accuracies(self, model: nn.Module, split: str, prediction: dict[str, Tensor] | None = None) -> Accuracies:
        """`split`'s accuracies of `model` with the method's prediction state `prediction` (default: its current one)."""
        if prediction is None:
            prediction = NO_PREDICTION_STATE if self.predictor is None else self.method.prediction_state()
        build = None if self.predictor is None else lambda: self.predictor(model, prediction)
        with self.autocast:
            return self.cache.accuracies(
                model.state_dict(), prediction, split,
                lambda: accuracies(model, self.tasks, split, self.scenario, self.batch_size, build),
            )

    def state_dict(self) -> dict:
        """The latest val accuracies and the best point (its mean, model state and prediction state)."""
        best = None
        if self.best is not None:
            mean, snapshot = self.best
            best = {"mean": mean, "model": snapshot.weights, "prediction": snapshot.prediction}
        return {"last_val": self.last_val, "best": best}

    def load_state_dict(self, state: dict) -> None:
        self.last_val = state["last_val"]
        best = state["best"]
        self.best = None if best is None else (best["mean"], Snapshot(best["model"], best.get("prediction", {})))
        self.best_results = {}
