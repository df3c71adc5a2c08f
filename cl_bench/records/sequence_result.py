"""What a trained sequence leaves behind besides its metrics rows."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SequenceResult:
    """Accuracy matrices (a row per finished task) and the test accuracies of the Score's model, by
    accuracy kind (`evaluation`); the training steps and the seconds spent training and evaluating."""

    val_matrix: dict[str, list[list[float]]] = field(default_factory=dict)
    test_matrix: dict[str, list[list[float]]] = field(default_factory=dict)
    best_test: dict[str, list[float]] = field(default_factory=dict)
    first_task_cached: bool = False  # task A's state was taken from the task-A cache, not trained in this run
    train_steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
