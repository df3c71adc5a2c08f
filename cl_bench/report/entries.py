"""Each run as the table sees it (an `Entry`): the experiment it is a seed of, the weights it was run with, how it
ended and its figures. A row of the table is one experiment: runs share it only when their configs
(core.experiment) agree on everything but the seed and the weights being selected over (the method's
`selectable` and the `select` keys)."""

from __future__ import annotations

import importlib
import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cl_bench.core.accuracy import TASK_AWARE
from cl_bench.core.errors import one_line
from cl_bench.core.experiment import at, experiment_identity, method_label
from cl_bench.core.score import average_final_accuracy, task_letters
from cl_bench.core.version import VERSION
from cl_bench.report.flags import score_flags
from cl_bench.report.read import READ_ERRORS, RunFolder
from cl_bench.report.rescore import asked_window, rescored, with_window
from cl_bench.report.settings import METRICS, Settings, plain

log = logging.getLogger(__name__)

DEFAULT_LR_LABELS = {"0.001": "", "0.0001": "low lr"}
FINAL_PREFIX = "val_final_"  # the values of the `final` columns: val_final_A, ...


def canonical(value: Any) -> str:
    """A config value as one text, equal for equal values (a key to group by, never read back)."""
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Entry:
    """One run: `identity` the experiment it is a seed of (its config less the seed and the selected keys),
    `params` the selected keys' values, `choices` its config group choices; `values` its figures by name (the
    metric's val, per task and test, the extra columns'), `flags` what the report says of its Score."""

    folder: str
    status: str
    error: str | None
    overrides: str | None
    method: str
    lr: Any
    seed: Any
    sequence: str
    scenario: Any
    version: str
    identity: dict
    params: dict
    choices: dict
    lr_selected: bool
    lr_labels: dict
    wall_time_s: float | None = None
    steps_per_s: float | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment(self) -> tuple[str, str]:
        """The row it belongs to: its experiment and the cl_bench version that ran it."""
        return canonical(self.identity), self.version

    @property
    def weights(self) -> str:
        return canonical(self.params)


def methods_selectable(config: DictConfig) -> list[str]:
    """The dotted keys of the run's methods' `selectable` weights: `method.<key>` and `plus.<name>.<key>`."""
    nodes = {"method": config.method, **{f"plus.{name}": node for name, node in (config.get("plus") or {}).items()}}
    return [f"{prefix}.{key}" for prefix, node in nodes.items() for key in method_selectable(node._target_)]


@lru_cache(maxsize=None)
def method_selectable(target: str) -> tuple[str, ...]:
    """The method class's `selectable` (of a config check_targets allowed); none, with a warning, if the
    class cannot be imported."""
    module, _, name = target.rpartition(".")
    try:
        return tuple(getattr(importlib.import_module(module), name).selectable)
    except Exception as error:  # noqa: BLE001 (a target of an earlier version, or broken code: nothing to select)
        log.warning("%s cannot be imported (%s: %s): its runs select over no method weights", target,
                    type(error).__name__, one_line(error))
        return ()


def task_aware_matrices(summary: dict) -> tuple[list[list[float]], list[list[float]]]:
    """(test, val) accuracy matrices of the task-aware accuracy: class-IL keeps them beside the scenario's, a
    task-IL run's own are task-aware; a domain-IL run has none (LookupError)."""
    matrices = (summary.get("accuracy_matrices") or {}).get(TASK_AWARE)
    if matrices is not None:
        return matrices["test"], matrices["val"]
    if summary.get("scenario") == "task":
        return summary["accuracy_matrix"], summary["val_accuracy_matrix"]
    raise LookupError(f"report.metric=final_task_aware_accuracy: a {summary.get('scenario')}-IL run has no "
                      f"task-aware accuracy (class- and task-IL runs have one); use report.metric=final_accuracy")


def metric_values(summary: dict, metric: str) -> tuple[Any, Any, dict[str, Any]]:
    """(val, test, per-task) of a finished run's summary for `metric`."""
    if metric == "score":
        return summary.get("score"), summary.get("score_test"), summary.get("score_k") or {}
    if metric == "final_task_aware_accuracy":
        test, val = task_aware_matrices(summary)
        per_task = dict(zip(task_letters(len(test[-1])), test[-1]))
        return average_final_accuracy(val), average_final_accuracy(test), per_task
    val_last = (summary.get("val_accuracy_matrix") or [[]])[-1]
    val = summary.get("average_final_val_accuracy", sum(val_last) / len(val_last) if val_last else None)
    last = (summary.get("accuracy_matrix") or [[]])[-1]
    return val, summary.get("average_final_accuracy"), dict(zip(task_letters(len(last)), last))


def _version_tag(summary: dict | None) -> str:
    """"" for the current cl_bench (and jobs without a result that do not say: running, not run,
    unreadable); else the version that made the run."""
    version = ((summary or {}).get("versions") or {}).get("cl_bench")
    if version is None and (summary is None or summary["status"] in ("running", "not_run", "unreadable")):
        return ""
    return "" if version == VERSION else version or "unknown"


def _final_values(summary: dict) -> dict[str, float]:
    """Each task's validation accuracy after the last task, by task letter (the `final` columns)."""
    last = (summary.get("val_accuracy_matrix") or [[]])[-1]
    return {f"{FINAL_PREFIX}{letter}": value for letter, value in zip(task_letters(len(last)), last)}


def entry_of(run: RunFolder, settings: Settings) -> Entry:
    """The run as the table sees it, its Score over the window its config asks for (report.rescore)."""
    scored = rescored(run.summary or {"status": "running"}, run.folder, asked_window(run.config))
    summary, config = scored.summary, with_window(run.config, scored.window)
    selected = [*methods_selectable(config), *settings.select]
    full = experiment_identity(config)
    entry = Entry(
        folder=str(run.folder), status=summary.get("status"), error=summary.get("error"), overrides=run.overrides,
        method=summary.get("method") or method_label(config),
        lr=summary.get("lr", at(full, "lr")),
        seed=summary.get("seed", OmegaConf.select(config, "seed", default=None)),
        sequence="+".join(summary.get("datasets") or list((full.get("dataset") or {}).keys())),
        scenario=summary.get("scenario", full.get("scenario")),
        version=_version_tag(run.summary),
        identity=json.loads(canonical(experiment_identity(config, ignore=selected))),
        params=json.loads(canonical({key: at(full, key) for key in selected})),
        choices=run.choices,
        lr_selected="lr" in selected,
        lr_labels=plain(OmegaConf.select(config, "report.lr_labels", default=None)) or DEFAULT_LR_LABELS,
        wall_time_s=summary.get("wall_time_s"),
        steps_per_s=summary.get("steps_per_s"),
    )
    if entry.status == "ok":
        metric = METRICS[settings.metric]
        val, test, per_task = metric_values(summary, settings.metric)
        entry.values = {metric.val: val, metric.test: test, **{f"{metric.task}{k}": v for k, v in per_task.items()}}
        if "final" in settings.columns:
            entry.values.update(_final_values(summary))
        if settings.metric == "score":
            entry.flags = score_flags(summary, run.folder, scored.window, scored.test_unknown)
    return entry


def entries_of(runs: list[RunFolder], settings: Settings) -> list[Entry]:
    """The runs as entries; one whose config or summary holds values of the wrong shape is left out with a
    warning."""
    entries = []
    for run in runs:
        try:
            entries.append(entry_of(run, settings))
        except (*READ_ERRORS, AttributeError, LookupError, TypeError) as error:
            log.warning("left out of the report: %s: its config or summary cannot be read (%s: %s)",
                        run.folder, type(error).__name__, one_line(error))
    return entries


def once_per_seed(entries: list[Entry]) -> list[Entry]:
    """Each experiment, selected weights and seed counted once: a run repeated in another folder given to the
    report is the same measurement again, not another seed. A finished run is kept over an unfinished one, else
    the last folder; the repeats are named in a warning. The kept runs stay in their order."""
    kept: dict[tuple, Entry] = {}
    for entry in entries:
        key = (*entry.experiment, entry.weights, canonical(entry.seed))
        other = kept.get(key)
        if other is None or (entry.status == "ok", entry.folder) >= (other.status == "ok", other.folder):
            kept[key] = entry
    chosen = {id(entry) for entry in kept.values()}
    repeated = sorted((entry for entry in entries if id(entry) not in chosen),
                      key=lambda entry: (entry.status == "ok", entry.folder))
    if repeated:
        log.warning("%d run(s) repeat an experiment, weights and seed already found; counted once: %s",
                    len(repeated), ", ".join(entry.folder for entry in repeated[:5]))
    return [entry for entry in entries if id(entry) in chosen]


def number(value: Any) -> float:
    """A figure as a float; NaN where there is none."""
    return math.nan if value is None else float(value)
