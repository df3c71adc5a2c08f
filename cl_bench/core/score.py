"""The two-cities post's Score and the standard continual-learning summaries of an accuracy matrix."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass


def task_letters(n_tasks: int) -> list[str]:
    """Short task keys as in the seed (A, B, ...); numbers past 26 tasks."""
    if n_tasks <= 26:
        return list(string.ascii_uppercase[:n_tasks])
    return [str(k + 1) for k in range(n_tasks)]


@dataclass
class Score:
    """Peak of the mean validation accuracy over all tasks, and each task's accuracy there."""

    score: float
    per_task: list[float]
    step: int
    row: int


# The Score rule, defined here once (the summary, the trainer's best-model snapshot and the report follow it):
# Score = max_t mean_k val_k(t) over the evaluation points t of the Score's window; ties go to the earliest t; a
# point where some task has no accuracy (NaN) does not count. The window (`score.window`) is the last task's:
# TRAINING, its points from its first update on; WITH_START, its step 0 too. The last task's step 0 is the model
# before any update on it, the same for every method, so a Score taken there measures none of them.
TRAINING, WITH_START = "training", "with_start"
SCORE_WINDOWS = (TRAINING, WITH_START)
EARLIER_WINDOW = WITH_START  # the window of a summary without `score_window`: made before `score.window` existed
# A task's accuracy is at chance when it is within this many binomial standard errors of a uniform guess's.
CHANCE_STANDARD_ERRORS = 2


def in_score_window(task_idx: int, task_step: int, n_tasks: int, window: str) -> bool:
    """Whether the evaluation point at step `task_step` of task `task_idx` is in the Score's `window`."""
    return task_idx == n_tasks - 1 and (task_step > 0 or window == WITH_START)


def new_peak(accuracies: list[float], peak: float | None) -> float | None:
    """The mean of a point's `accuracies` (one per task) if it beats `peak`, the best mean of the
    window's points before it (None: no point yet); else None."""
    if any(math.isnan(a) for a in accuracies):
        return None
    mean = sum(accuracies) / len(accuracies)
    return mean if peak is None or mean > peak else None


def peak_score(val_curves: list[list[float]], window_start: int, steps: list[int]) -> Score:
    """The Score over evaluation points t >= window_start (row index); `val_curves[t][k]` is task
    k's val accuracy at row t."""
    best: Score | None = None
    for row in range(window_start, len(val_curves)):
        mean = new_peak(val_curves[row], None if best is None else best.score)
        if mean is not None:
            best = Score(mean, list(val_curves[row]), steps[row], row)
    if best is None:
        raise ValueError("no evaluation point with every task's accuracy in the Score window")
    return best


def at_chance(accuracy: float, units: int, n_examples: int) -> bool:
    """Whether `accuracy` on `n_examples` is no better than a uniform guess among `units` output units: at most
    the guess's mean 1/units plus CHANCE_STANDARD_ERRORS of its binomial standard error on `n_examples`."""
    guess = 1 / units
    return accuracy <= guess + CHANCE_STANDARD_ERRORS * math.sqrt(guess * (1 - guess) / n_examples)


def average_final_accuracy(matrix: list[list[float]]) -> float:
    """Mean accuracy over all tasks after the last task."""
    return sum(matrix[-1]) / len(matrix[-1])


def forgetting(matrix: list[list[float]]) -> list[float]:
    """Per earlier task j: best accuracy after training tasks j..T-2 minus the final one (Chaudhry et al.)."""
    last = len(matrix) - 1
    return [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]


def backward_transfer(matrix: list[list[float]]) -> float:
    """Mean over earlier tasks of final accuracy minus accuracy right after learning it (Lopez-Paz & Ranzato)."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return sum(matrix[last][j] - matrix[j][j] for j in range(last)) / last
