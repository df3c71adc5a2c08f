"""The run's `summary.json`: status, Score and its parts, the accuracy matrices and the run's cost."""

from __future__ import annotations

from cl_bench.core.accuracy import ROW_PREFIX
from cl_bench.core.score import (
    average_final_accuracy,
    backward_transfer,
    forgetting,
    in_score_window,
    peak_score,
    task_letters,
)
from cl_bench.records.sequence_result import SequenceResult


def score_summary(rows: list[dict], task_names: list[str], accuracy: str, window: str) -> dict:
    """Score of the `accuracy` kind over the evaluation `rows` in the Score's `window` (metrics.py), by task
    letter; its point's global and task step, and the window."""
    curves = [[row[f"val{ROW_PREFIX[accuracy]}/{name}"] for name in task_names] for row in rows]
    in_window = (in_score_window(row["task"], row["task_step"], len(task_names), window) for row in rows)
    window_start = next((i for i, inside in enumerate(in_window) if inside), len(rows))
    score = peak_score(curves, window_start, [row["step"] for row in rows])
    return {
        "score": score.score,
        "score_k": dict(zip(task_letters(len(task_names)), score.per_task)),
        "score_step": score.step,
        "score_task_step": rows[score.row]["task_step"],
        "score_window": window,
    }


def result_summary(
    rows: list[dict], task_names: list[str], result: SequenceResult, accuracy: str, window: str
) -> dict:
    """Every figure of a finished sequence, ready for JSON; Score (over its `window`), test Score, matrices and
    the summaries of the accuracy matrix follow the `accuracy` kind (class-IL keeps both kinds' matrices under
    `accuracy_matrices`)."""
    letters = task_letters(len(task_names))
    names = list(task_names)
    summary = {"accuracy": accuracy, **score_summary(rows, names, accuracy, window)}
    best_test = result.best_test[accuracy]
    test_matrix, val_matrix = result.test_matrix[accuracy], result.val_matrix[accuracy]
    summary["score_test"] = sum(best_test) / len(best_test)
    summary["score_test_k"] = dict(zip(letters, best_test))
    forgot = forgetting(test_matrix)
    summary.update(
        {
            "accuracy_matrix": test_matrix,
            "val_accuracy_matrix": val_matrix,
            "average_final_accuracy": average_final_accuracy(test_matrix),
            "average_final_val_accuracy": average_final_accuracy(val_matrix),
            "final_accuracy_k": dict(zip(letters, test_matrix[-1])),
            "forgetting": dict(zip(letters, forgot)),
            "average_forgetting": sum(forgot) / len(forgot) if forgot else 0.0,
            "bwt": backward_transfer(test_matrix),
            "train_steps": result.train_steps,
            "steps_per_s": result.train_steps / result.train_seconds if result.train_seconds else None,
            "eval_seconds": result.eval_seconds,
        }
    )
    if len(result.test_matrix) > 1:
        summary["accuracy_matrices"] = {
            kind: {"test": result.test_matrix[kind], "val": result.val_matrix[kind],
                   "score": score_summary(rows, names, kind, window)["score"]}
            for kind in result.test_matrix
        }
    return summary
