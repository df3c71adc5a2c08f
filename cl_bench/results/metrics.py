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


def peak_score(val_curves: list[list[float]], window_start: int, steps: list[int]) -> Score:
    """Score = max_t mean_k val_k(t) over evaluation points t >= window_start (row index);
    ties go to the earliest t. `val_curves[t][k]` is task k's val accuracy at row t."""
    best: Score | None = None
    for row in range(window_start, len(val_curves)):
        accuracies = val_curves[row]
        if any(math.isnan(a) for a in accuracies):
            continue
        mean = sum(accuracies) / len(accuracies)
        if best is None or mean > best.score:
            best = Score(mean, list(accuracies), steps[row], row)
    if best is None:
        raise ValueError("no evaluation point with every task's accuracy in the Score window")
    return best


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
