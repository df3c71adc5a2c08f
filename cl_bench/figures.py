"""Figures as in seed 000: every task's validation accuracy against the training step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cl_bench.metrics import task_letters  # noqa: E402


def val_columns(metrics: pd.DataFrame) -> list[str]:
    return [c for c in metrics.columns if c.startswith("val/")]


def task_boundaries(metrics: pd.DataFrame) -> list[int]:
    """Global steps at which a task after the first starts."""
    starts = metrics.groupby("task")["step"].min()
    return [int(s) for t, s in starts.items() if t > 0]


def plot_curves(metrics: pd.DataFrame, path: Path, title: str) -> None:
    """One line per task's val accuracy, task boundaries as dashed vertical lines."""
    figure, axes = plt.subplots(figsize=(7, 4))
    columns = val_columns(metrics)
    for letter, column in zip(task_letters(len(columns)), columns):
        axes.plot(metrics["step"], 100 * metrics[column], label=f"task {letter}: {column[4:]}")
    for boundary in task_boundaries(metrics):
        axes.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
    axes.set(xlabel="training step", ylabel="validation accuracy (%)", title=title, ylim=(0, 100))
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_comparison(curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Seed 000's Figure 3: one panel per task, one line per technique (its first run)."""
    any_metrics = next(iter(curves.values()))
    columns = val_columns(any_metrics)
    figure, panels = plt.subplots(len(columns), 1, figsize=(8, 3 * len(columns)), sharex=True, squeeze=False)
    for panel, letter, column in zip(panels[:, 0], task_letters(len(columns)), columns):
        for label, metrics in curves.items():
            if column in metrics:
                panel.plot(metrics["step"], 100 * metrics[column], label=label)
        for boundary in task_boundaries(any_metrics):
            panel.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
        panel.set(ylabel=f"task {letter} val acc (%)", ylim=(0, 100), title=column[4:])
    panels[-1, 0].set_xlabel("training step")
    panels[0, 0].legend(fontsize="small", loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
