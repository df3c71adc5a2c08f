"""The run's `summary.json`: status, Score and its parts, the accuracy matrix and the run's cost."""

from __future__ import annotations

from cl_bench.data.task import Task
from cl_bench.metrics import average_final_accuracy, backward_transfer, forgetting, peak_score, task_letters
from cl_bench.trainer import SequenceResult

SUMMARY_FILE = "summary.json"


def score_summary(rows: list[dict], tasks: list[Task]) -> dict:
    """Score over the evaluation rows of the last task (its step 0 included), by task letter."""
    letters = task_letters(len(tasks))
    curves = [[row[f"val/{t.name}"] for t in tasks] for row in rows]
    window_start = next(i for i, row in enumerate(rows) if row["task"] == len(tasks) - 1)
    score = peak_score(curves, window_start, [row["step"] for row in rows])
    return {
        "score": score.score,
        "score_k": dict(zip(letters, score.per_task)),
        "score_step": score.step,
    }


def result_summary(rows: list[dict], tasks: list[Task], result: SequenceResult) -> dict:
    """Every figure of a finished sequence, ready for JSON."""
    letters = task_letters(len(tasks))
    summary = score_summary(rows, tasks)
    summary["score_test"] = sum(result.best_test) / len(result.best_test)
    summary["score_test_k"] = dict(zip(letters, result.best_test))
    forgot = forgetting(result.test_matrix)
    summary.update(
        {
            "accuracy_matrix": result.test_matrix,
            "val_accuracy_matrix": result.val_matrix,
            "average_final_accuracy": average_final_accuracy(result.test_matrix),
            "forgetting": dict(zip(letters, forgot)),
            "average_forgetting": sum(forgot) / len(forgot) if forgot else 0.0,
            "bwt": backward_transfer(result.test_matrix),
            "train_steps": result.train_steps,
            "steps_per_s": result.train_steps / result.train_seconds if result.train_seconds else None,
            "eval_seconds": result.eval_seconds,
        }
    )
    return summary
