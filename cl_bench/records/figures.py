"""Figures as in the two-cities post: every task's validation accuracy against the training step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from cl_bench.core.files import write_atomically
from cl_bench.core.score import task_letters

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# matplotlib (about 0.4 s to import) is imported when a figure is drawn, never at import time: a run
# draws its curve figure once, at its end. Figures are drawn on `matplotlib.figure.Figure` with the
# Agg canvas, without pyplot's global state.


def val_columns(metrics: pd.DataFrame) -> list[str]:
    return [c for c in metrics.columns if c.startswith("val/")]


def task_boundaries(metrics: pd.DataFrame) -> list[int]:
    """Global steps at which a task after the first starts."""
    starts = metrics.groupby("task")["step"].min()
    return [int(s) for t, s in starts.items() if t > 0]


def _figure(**options) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**options)


def save(figure: Figure, path: Path) -> None:
    """`figure` as a PNG file, written atomically."""
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=120))


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """`curves_figure(rows, title)` as the PNG file `path`."""
    save(curves_figure(rows, title), path)


def curves_figure(rows: list[dict], title: str) -> Figure:
    """One line per task's val accuracy against the step (class-IL: the task-aware accuracy dotted
    in the same colour), task boundaries as dashed vertical lines; `rows` are the run's metrics rows
    (a missing or None accuracy is a gap)."""
    figure = _figure(figsize=(7, 4))
    axes = figure.subplots()
    columns = list(dict.fromkeys(k for row in rows for k in row if k.startswith("val/")))
    steps = [row["step"] for row in rows]

    def percent(column: str) -> list[float]:
        return [math.nan if row.get(column) is None else 100 * row[column] for row in rows]

    for letter, column in zip(task_letters(len(columns)), columns):
        (line,) = axes.plot(steps, percent(column), label=f"task {letter}: {column[4:]}")
        aware = "val_task_aware/" + column[4:]
        if aware in rows[-1]:
            axes.plot(steps, percent(aware), color=line.get_color(), linestyle=":", label=f"task {letter}, task-aware")
    starts: dict[int, int] = {}
    for row in rows:
        starts[row["task"]] = min(starts.get(row["task"], row["step"]), row["step"])
    for task, start in starts.items():
        if task > 0:
            axes.axvline(start, color="grey", linestyle="--", linewidth=0.8)
    axes.set(xlabel="training step", ylabel="validation accuracy (%)", title=title, ylim=(0, 100))
    axes.legend(loc="lower left", fontsize="small")
    # the margins tight_layout computes for this fixed design (y ticks 0-100), without its extra draw pass
    figure.subplots_adjust(left=0.103, right=0.975, bottom=0.147, top=0.909)
    return figure


def plot_comparison(curves: dict[str, pd.DataFrame], path: Path) -> None:
    """The two-cities post's Figure 3: one panel per task, one line per technique (its first run)."""
    any_metrics = next(iter(curves.values()))
    columns = val_columns(any_metrics)
    figure = _figure(figsize=(8, 3 * len(columns)))
    panels = figure.subplots(len(columns), 1, sharex=True, squeeze=False)
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
    save(figure, path)
