"""The table: one row per experiment (and cl_bench version), in the order the runs were found. Within a row the
selected weights with the best mean validation metric over seeds are chosen (report/entries.py says which runs
share a row), and that choice's figures are given as mean, sample std and SEM over its seeds; a row without an
ok run shows its state. Rows that would share a name are told apart (report/labels.py)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cl_bench.core.status import NOT_OK
from cl_bench.report.entries import FINAL_PREFIX, Entry, canonical, number
from cl_bench.report.labels import distinguishing_labels, short
from cl_bench.report.settings import METRICS, Metric, Settings


@dataclass
class Table:
    """The table (`frame`: a row per experiment, its Technique, figures and counts; what report.csv holds) and,
    for each row, its runs and the ok runs of its chosen weights."""

    frame: pd.DataFrame
    runs: list[list[Entry]]
    chosen: list[list[Entry]]
    value_columns: list[str]  # the metric's figures: val, per task, test
    extra_columns: list[str]  # the extra columns' figures (`final`: val_final_A, ...)


def technique(method: str, lr: float, lr_labels: dict[str, str]) -> str:
    """The two-cities post's row names: "Baseline", "Baseline (low lr)"; other rates spelt out (as
    written when not a number: a failed job's `lr=${oops}`)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        return f"{method} (lr={lr})"
    label = lr_labels.get(f"{lr:g}", lr_labels.get(str(lr), f"lr={lr:g}"))
    return f"{method} ({label})" if label else method


def stats(values: list[Any]) -> dict[str, float]:
    """Mean, sample std (ddof 1) and SEM of the values that are not missing (NaN spread for one value)."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if len(present) < 2:
        return {"": statistics.fmean(present) if present else math.nan, "_std": math.nan, "_sem": math.nan}
    std = statistics.stdev(present)
    return {"": statistics.fmean(present), "_std": std, "_sem": std / math.sqrt(len(present))}


def shown_params(ok: list[Entry], chosen: dict) -> str:
    """The chosen values of the selected keys that take several values in the row."""
    seen: dict[str, set[str]] = {}
    for entry in ok:
        for key, value in entry.params.items():
            seen.setdefault(key, set()).add(canonical(value))
    varied = [key for key in sorted(seen) if len(seen[key]) > 1]
    return ", ".join(f"{key.removeprefix('method.')}={short(chosen[key])}" for key in varied)


def best_weights(ok: list[Entry], metric: Metric) -> str:
    """The weights (Entry.weights) of the ok runs with the best mean val metric; the first found of a tie."""
    means: dict[str, list[float]] = {}
    for entry in ok:
        means.setdefault(entry.weights, []).append(number(entry.values.get(metric.val)))
    best = {weights: stats(values)[""] for weights, values in means.items()}
    return max(best, key=lambda weights: -math.inf if math.isnan(best[weights]) else best[weights])


def experiment_row(runs: list[Entry], metric: Metric, columns: list[str]) -> tuple[dict[str, Any], list[Entry]]:
    """One experiment's row and the ok runs of its chosen weights: their statistics of `columns`."""
    first = runs[0]
    name = first.method if first.lr_selected else technique(first.method, first.lr, first.lr_labels)
    counts = {status: sum(entry.status == status for entry in runs) for status in NOT_OK}
    row: dict[str, Any] = {
        "Technique": name + (f" [cl_bench {first.version}]" if first.version else ""),
        "name": name, "sequence": first.sequence, "scenario": first.scenario, "method": first.method,
        "lr": first.lr, "version": first.version, **counts,
    }
    ok = [entry for entry in runs if entry.status == "ok"]
    if not ok:
        state = next(status for status in NOT_OK if counts[status])
        errors = [entry.error for entry in runs if entry.status == state and entry.error is not None]
        row.update(status=state, n=0, error=errors[0] if errors else None)
        return row, []
    weights = best_weights(ok, metric)
    best = [entry for entry in ok if entry.weights == weights]
    row.update(status="ok", params=weights, shown_params=shown_params(ok, best[0].params), n=len(best),
               best_run=best[0].folder, lr=best[0].lr)
    for column in columns:
        figures = stats([entry.values.get(column) for entry in best])
        row.update({f"{column}{suffix}": value for suffix, value in figures.items()})
    for cost in ("wall_time_s", "steps_per_s"):
        row.update({f"{cost}{suffix}": value for suffix, value in stats([getattr(e, cost) for e in best]).items()})
    return row, best


def figure_columns(entries: list[Entry], metric: Metric) -> tuple[list[str], list[str]]:
    """The metric's figures (val, per task in order, test) and the extra columns' (sorted) the runs have."""
    names = {name for entry in entries for name in entry.values}
    tasks = sorted(name for name in names if name.startswith(metric.task) and name != metric.test)
    return [metric.val, *tasks, metric.test], sorted(name for name in names if name.startswith(FINAL_PREFIX))


def score_table(entries: list[Entry], settings: Settings) -> Table:
    """One row per experiment (identity, cl_bench version); rows that share a name get told apart."""
    metric = METRICS[settings.metric]
    values, extras = figure_columns(entries, metric)
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.experiment, []).append(entry)
    made = [experiment_row(runs, metric, [*values, *extras]) for runs in groups.values()]
    frame = pd.DataFrame([row for row, _ in made])
    runs = list(groups.values())
    named: dict[tuple, list[int]] = {}
    for index, row in frame.iterrows():
        named.setdefault((row.sequence, row.scenario, row["name"], row.version), []).append(index)
    for indices in named.values():
        if len(indices) > 1:
            first = [runs[index][0] for index in indices]
            labels = distinguishing_labels([entry.identity for entry in first], [entry.choices for entry in first])
            for index, suffix in zip(indices, labels):
                if suffix:
                    frame.loc[index, "Technique"] = f"{frame.loc[index, 'Technique']} · {suffix}"
    return Table(frame, runs, [chosen for _, chosen in made], values, extras)


def chosen_params(row: pd.Series) -> dict:
    """A row's chosen weights (the `params` of report.csv)."""
    return json.loads(row.params)
