"""How a report's table is made: its metric, its spread, the keys selected over by validation and the extra
columns; `cl-bench-report`'s flags win over the runs' `report:` config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from cl_bench.report.read import RunFolder

SPREADS = {"std": "sample std", "sem": "SEM (sample std / √n)"}
# Columns a table can add after its metric's (report.columns, --columns): `final`, each task's validation accuracy
# after the last task (Final A, Final B, ...: the retention a peak-average Score can hide).
COLUMNS = ("final",)


@dataclass(frozen=True)
class Metric:
    """A table metric: its values' names (val selects, test is reported, task the prefix of the per-task
    ones) and headers."""

    val: str
    test: str
    task: str
    val_header: str
    test_header: str
    task_header: str


METRICS = {
    "score": Metric("score", "score_test", "score_", "Val Score", "Test Score", "Val Score_{}"),
    "final_accuracy": Metric(
        "final_val_accuracy", "final_accuracy", "final_accuracy_",
        "Val final acc", "Test final acc", "Test final acc_{}",
    ),
    # class-IL's task-aware accuracy (the argmax within each task's own units) after the last task: Buzzega et
    # al.'s Task-IL column of the same runs; a task-IL run's own accuracy is task-aware already
    "final_task_aware_accuracy": Metric(
        "final_task_aware_val_accuracy", "final_task_aware_accuracy", "final_task_aware_accuracy_",
        "Val final task-aware acc", "Test final task-aware acc", "Test final task-aware acc_{}",
    ),
}


@dataclass(frozen=True)
class Settings:
    """How the table is made: `metric` (a METRICS key), `spread` (std | sem), extra `select` keys, extra
    `columns` (COLUMNS)."""

    metric: str = "score"
    spread: str = "std"
    select: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()


def plain(value: Any) -> Any:
    """A config node as plain dicts and lists; other values as they are."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _agreed(runs: list[RunFolder], key: str, flag: str | None, default: str, allowed) -> str:
    """A setting: the flag, else the runs' `report.<key>` (they must agree), else the default."""
    values = {str(OmegaConf.select(run.config, f"report.{key}", default=default)) for run in runs}
    if flag is None and len(values) > 1:
        raise ValueError(f"the runs disagree on report.{key} ({', '.join(sorted(values))}): choose one with --{key}")
    value = flag or (values.pop() if values else default)
    if value not in allowed:
        raise ValueError(f"report.{key}={value}: expected one of {', '.join(allowed)}")
    return value


def _extra_columns_asked(runs: list[RunFolder], columns: tuple[str, ...]) -> tuple[str, ...]:
    """The COLUMNS the flag and the runs' `report.columns` ask for."""
    asked = set(columns)
    for run in runs:
        asked.update(plain(OmegaConf.select(run.config, "report.columns", default=None)) or [])
    unknown = sorted(asked - set(COLUMNS))
    if unknown:
        raise ValueError(f"report.columns={unknown}: expected some of {', '.join(COLUMNS)}")
    return tuple(column for column in COLUMNS if column in asked)


def report_settings(runs: list[RunFolder], metric: str | None = None, spread: str | None = None,
                    select: tuple[str, ...] = (), columns: tuple[str, ...] = ()) -> Settings:
    """Flags win over the runs' `report:` config; `select` and `columns` add to every run's `report.select` and
    `report.columns`."""
    keys = set(select)
    for run in runs:
        keys.update(plain(OmegaConf.select(run.config, "report.select", default=None)) or [])
    return Settings(
        metric=_agreed(runs, "metric", metric, "score", METRICS),
        spread=_agreed(runs, "spread", spread, "std", SPREADS),
        select=tuple(sorted(keys)),
        columns=_extra_columns_asked(runs, columns),
    )
