"""The results table of a set of runs (the two-cities post's shape) as Markdown and CSV, and the comparison figure.

`cl-bench-report DIR...` (cl_bench.cli.report) reads every run folder under the given run or
multirun folders; `write_sweep_report` does the same at the end of a multirun. A row is one experiment: runs share it only
when their configs (cl_bench.results.experiment_keys) agree on everything but the seed and the weights being
selected over (the method's `selectable` and `--select` keys). Within a row the weights with the best
mean validation metric over seeds are chosen, and that choice's test metric is reported.

A run's config is the one it started with, `<run>/.cl_bench/config.yaml` (with `hydra.yaml` and
`overrides.yaml` beside it); run folders of earlier versions have only Hydra's `.hydra/`, which Hydra
rewrites at every start in the folder, so it is read only where `.cl_bench/` has no config. A saved
config is data: it is read by cl_bench.engine.saved_config before anything in it is resolved or imported, and a
run whose config names a target that is not allowed is left out. Whatever cannot be read is named in
a one-line warning: a missing, truncated or invalid config leaves its run out; an unreadable
`summary.json` counts the job as "unreadable" in its row.

A job's status is ok, failed, interrupted, cancelled (its SLURM job was cancelled: scancel, or Ctrl-C on
a SLURM sweep), not_run (a sweep stopped before it), running (no summary
yet, and a process holds its folder's lock), killed (no summary, and no process holds the lock: it
ended without writing one) or unreadable; each row counts its jobs of every status (`n` is the chosen weights' ok seeds),
and a row without an ok job shows its state. Written to the output folder: `report.md` (the table,
then the jobs without a result: their folder, status, overrides and error), `report.csv` (one line
per experiment, a count column per status), `jobs.csv` (one line per job counted: its row's
Technique, folder, status, seed, overrides, error) and `comparison.png`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_bench import __version__
from cl_bench.core.files import read_data
from cl_bench.core.layout import (
    COMPARISON_FIGURE,
    CONFIG_FILE,
    HYDRA_RECORD,
    METRICS_FILE,
    REPORT_MARKDOWN,
    STATE_DIR,
    SUMMARY_FILE,
)
from cl_bench.core.status import NOT_OK, STATUSES
from cl_bench.engine.run_folder import is_running, saved_config_path, state_dir
from cl_bench.engine.saved_config import MAX_CONFIG_BYTES, UnsafeConfig, load_yaml_data, read_saved_config, targets_of
from cl_bench.errors import one_line
from cl_bench.methods.build import method_label
from cl_bench.results.experiment_keys import experiment_identity, flatten
from cl_bench.results.figures import plot_comparison
from cl_bench.results.metrics import task_letters
from cl_bench.results.metrics_log import read_metrics
from cl_bench.results.report_files import check_report_folder, write_report_files
from cl_bench.results.rescore import asked_window, rescored, with_window
from cl_bench.results.score_notes import blank_unknown_tests, score_flags, score_notes
from cl_bench.results.summary_check import summary_problem

log = logging.getLogger(__name__)

DEFAULT_LR_LABELS = {"0.001": "", "0.0001": "low lr"}
WANDB_LOGGER = "cl_bench.loggers.wandb.WandbLogger"
SPREADS = {"std": "sample std", "sem": "SEM (sample std / √n)"}
# Columns a table can add after its metric's (report.columns, --columns): `final`, each task's validation accuracy
# after the last task (Final A, Final B, ...: the retention a peak-average Score can hide).
COLUMNS = ("final",)
FINAL_PREFIX = "val_final_"
RUN_MARKERS = (SUMMARY_FILE, METRICS_FILE, f"{STATE_DIR}/{CONFIG_FILE}", f"{HYDRA_RECORD}/{CONFIG_FILE}")
REQUIRED_KEYS = ("method._target_", "model._target_", "dataset", "seed")  # in every cl_bench run's config
# The statuses of a job without a result, in the order a row without an ok job shows the first it has.
LISTED = ("failed", "unreadable", "killed", "interrupted", "cancelled", "not_run")  # the jobs named under the table
JOB_COLUMNS = ["Technique", "job", "status", "seed", "overrides", "error"]
# What reading a saved file may raise: the file, its encoding, its YAML / JSON, OmegaConf's grammar.
READ_ERRORS = (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException)
MAX_SUMMARY_BYTES = 10_000_000  # a summary is a few kilobytes


@dataclass(frozen=True)
class Metric:
    """A table metric: its CSV columns (val selects, test is reported) and headers."""

    val: str
    test: str
    task: str  # prefix of the per-task columns
    val_header: str
    test_header: str
    task_header: str


METRICS = {
    "score": Metric("score", "score_test", "score_", "Val Score", "Test Score", "Val Score_{}"),
    "final_accuracy": Metric(
        "final_val_accuracy", "final_accuracy", "final_accuracy_",
        "Val final acc", "Test final acc", "Test final acc_{}",
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


@dataclass
class Run:
    """A run folder's config (unresolved), summary (None while running), Hydra group choices and
    command-line overrides (None when unknown)."""

    folder: Path
    config: DictConfig
    summary: dict | None
    choices: dict[str, Any]
    overrides: str | None


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Folders under `roots` that hold a run: a summary, metrics, or a saved config."""
    found = set()
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"no such run or multirun folder: {root}")
        for marker in RUN_MARKERS:
            depth = marker.count("/") + 1
            found.update(path.parents[depth - 1] for path in root.rglob(marker))
    return sorted(found)


def saved_config_dir(run_dir: Path) -> Path:
    """Where the run's config, hydra.yaml and overrides.yaml are: .cl_bench/ (the config the run
    started with) when it holds a config, else Hydra's .hydra/ (run folders of earlier versions)."""
    return state_dir(run_dir) if saved_config_path(run_dir).exists() else run_dir / HYDRA_RECORD


def read_config(path: Path, config_dirs: list[Path] | None = None,
                trusted: frozenset[tuple[str, str]] = frozenset()) -> DictConfig:
    """A saved run config, read as data (engine.saved_config; `config_dirs` and `trusted` as there); ValueError
    unless it is a whole one (it ends as a written YAML file ends, with a newline, and holds the keys every
    run's config has)."""
    config = read_saved_config(path, config_dirs, trusted).config
    if not read_data(path, MAX_CONFIG_BYTES).endswith(b"\n"):
        raise ValueError("truncated (it does not end with a newline)")
    tree = OmegaConf.to_container(config, resolve=False)
    missing = [key for key in REQUIRED_KEYS if _lookup(tree, key) is None]
    if missing:
        raise ValueError(f"no {', '.join(missing)} (truncated, or not a cl_bench run's config)")
    return config


def unreadable(path: Path, reason: str) -> dict:
    """The summary of a job whose summary.json cannot be used, and a warning saying why."""
    log.warning("%s cannot be read (%s): its job is counted as unreadable", path, reason)
    return {"status": "unreadable", "error": f"{path.name}: {reason}"}


def read_summary(path: Path, config: DictConfig) -> dict | None:
    """The job's summary: None while none is written; status "unreadable" (with a warning) when it cannot be
    read, is not a cl_bench summary, or holds what the report cannot use (results.summary_check)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        summary = json.loads(read_data(path, MAX_SUMMARY_BYTES))
        status = summary.get("status") if isinstance(summary, dict) else None
        if status not in STATUSES:
            raise ValueError(f"not a cl_bench job summary (status {status!r})")
    except READ_ERRORS as error:
        return unreadable(path, one_line(error))
    problem = summary_problem(summary, config)
    return summary if problem is None else unreadable(path, problem)


def _hydra_record(path: Path, what: str) -> Any:
    """A saved Hydra file (hydra.yaml, overrides.yaml), read as data; None when it is missing or (with a warning
    saying `what` follows) unreadable."""
    if not path.exists():
        return None
    try:
        return load_yaml_data(path)
    except READ_ERRORS as error:
        log.warning("%s cannot be read (%s): %s", path, one_line(error), what)
        return None


def _choices(path: Path) -> dict[str, Any]:
    """The config group choices (`model: mlp400`) of a saved hydra.yaml; none when it is missing or unreadable."""
    hydra = _hydra_record(path, "its run's row is labelled without its config group choices")
    choices = OmegaConf.select(hydra, "hydra.runtime.choices") if isinstance(hydra, DictConfig) else None
    return OmegaConf.to_container(choices, resolve=False) if isinstance(choices, DictConfig) else {}


def _overrides(path: Path) -> str | None:
    """The job's command-line overrides as typed (`method=kd lr=0.01`); None when missing or unreadable."""
    overrides = _hydra_record(path, "its job's overrides are shown as unknown")
    return " ".join(map(str, overrides)) if isinstance(overrides, ListConfig) else None


def read_run(run_dir: Path, config_dirs: list[Path] | None = None,
             trusted: frozenset[tuple[str, str]] = frozenset()) -> Run | None:
    """The run in `run_dir`, or None (with a warning naming what was not read) when it has no run's
    config, an unreadable one, or one that is not safe to read (engine.saved_config: checked before anything
    of it is resolved or imported; `config_dirs` and `trusted` as there)."""
    saved = saved_config_dir(run_dir)
    config_path = saved / CONFIG_FILE
    if not config_path.exists():
        log.warning("left out of the report: %s has no config (%s/%s or %s/%s)", run_dir, STATE_DIR, CONFIG_FILE,
                    HYDRA_RECORD, CONFIG_FILE)
        return None
    if saved.name == HYDRA_RECORD and not any((run_dir / name).exists() for name in (SUMMARY_FILE, METRICS_FILE)):
        log.warning("left out of the report: %s has only Hydra's %s/ (no %s/%s, %s or %s): no run started there",
                    run_dir, HYDRA_RECORD, STATE_DIR, CONFIG_FILE, SUMMARY_FILE, METRICS_FILE)
        return None
    try:
        config = read_config(config_path, config_dirs, trusted)
    except UnsafeConfig as error:
        log.warning("left out of the report: %s: %s", run_dir, one_line(error))
        return None
    except READ_ERRORS as error:
        log.warning("left out of the report: %s cannot be read: %s", config_path, one_line(error))
        return None
    summary = read_summary(run_dir / SUMMARY_FILE, config)
    if summary is None and is_running(run_dir) is False:
        summary = {"status": "killed", "error": "its process ended without a summary (killed, out of memory or a "
                                                f"full disk); continue with: cl-bench resume={run_dir}"}
    return Run(run_dir, config, summary, _choices(saved / "hydra.yaml"), _overrides(saved / "overrides.yaml"))


def _agreed(runs: list[Run], key: str, flag: str | None, default: str, allowed) -> str:
    """A setting: the flag, else the runs' `report.<key>` (they must agree), else the default."""
    values = {str(OmegaConf.select(run.config, f"report.{key}", default=default)) for run in runs}
    if flag is None and len(values) > 1:
        raise ValueError(f"the runs disagree on report.{key} ({', '.join(sorted(values))}): choose one with --{key}")
    value = flag or (values.pop() if values else default)
    if value not in allowed:
        raise ValueError(f"report.{key}={value}: expected one of {', '.join(allowed)}")
    return value


def report_settings(runs: list[Run], metric: str | None = None, spread: str | None = None,
                    select: tuple[str, ...] = (), columns: tuple[str, ...] = ()) -> Settings:
    """Flags win over the runs' `report:` config; `select` and `columns` add to every run's `report.select` and
    `report.columns`."""
    keys = set(select)
    for run in runs:
        keys.update(_plain(OmegaConf.select(run.config, "report.select", default=None)) or [])
    return Settings(
        metric=_agreed(runs, "metric", metric, "score", METRICS),
        spread=_agreed(runs, "spread", spread, "std", SPREADS),
        select=tuple(sorted(keys)),
        columns=_extra_columns_asked(runs, columns),
    )


def _extra_columns_asked(runs: list[Run], columns: tuple[str, ...]) -> tuple[str, ...]:
    """The COLUMNS the flag and the runs' `report.columns` ask for."""
    asked = set(columns)
    for run in runs:
        asked.update(_plain(OmegaConf.select(run.config, "report.columns", default=None)) or [])
    unknown = sorted(asked - set(COLUMNS))
    if unknown:
        raise ValueError(f"report.columns={unknown}: expected some of {', '.join(COLUMNS)}")
    return tuple(column for column in COLUMNS if column in asked)


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


def _plain(value: Any) -> Any:
    """A config node as plain dicts and lists; other values as they are."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _lookup(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def metric_values(summary: dict, metric: str) -> tuple[Any, Any, dict[str, Any]]:
    """(val, test, per-task) of a finished run's summary for `metric`."""
    if metric == "score":
        return summary.get("score"), summary.get("score_test"), summary.get("score_k") or {}
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
    return "" if version == __version__ else version or "unknown"


def run_record(run: Run, settings: Settings) -> dict[str, Any]:
    """One run as a flat record: its identity (the Score window its figures follow: results/rescore.py), selected
    weights, status and metric values."""
    scored = rescored(run.summary or {"status": "running"}, run.folder, asked_window(run.config))
    summary, config = scored.summary, with_window(run.config, scored.window)
    selected = [*methods_selectable(config), *settings.select]
    full = experiment_identity(config)
    lr_labels = _plain(OmegaConf.select(config, "report.lr_labels", default=None)) or DEFAULT_LR_LABELS
    record = {
        "run_dir": str(run.folder),
        "status": summary.get("status"),
        "error": summary.get("error"),
        "overrides": run.overrides,
        "method": summary.get("method") or method_label(config),
        "lr": summary.get("lr", _lookup(full, "lr")),
        "seed": summary.get("seed", OmegaConf.select(config, "seed", default=None)),
        "sequence": "+".join(summary.get("datasets") or list((full.get("dataset") or {}).keys())),
        "scenario": summary.get("scenario", full.get("scenario")),
        "version": _version_tag(run.summary),
        "identity": json.dumps(experiment_identity(config, ignore=selected), sort_keys=True, default=str),
        "params": json.dumps({key: _lookup(full, key) for key in selected}, sort_keys=True, default=str),
        "choices": json.dumps(run.choices, sort_keys=True),
        "lr_selected": "lr" in selected,
        "wall_time_s": summary.get("wall_time_s"),
        "steps_per_s": summary.get("steps_per_s"),
        "lr_labels": json.dumps(lr_labels),
    }
    if record["status"] == "ok":
        columns = METRICS[settings.metric]
        record[columns.val], record[columns.test], per_task = metric_values(summary, settings.metric)
        record.update({f"{columns.task}{letter}": value for letter, value in per_task.items()})
        if settings.metric == "score":
            record.update(score_flags(summary, run.folder, scored.window, scored.test_unknown))
        if "final" in settings.columns:
            record.update(_final_columns(summary))
    return record


def _final_columns(summary: dict) -> dict[str, float]:
    """Each task's validation accuracy after the last task, by task letter (`final` of COLUMNS)."""
    last = (summary.get("val_accuracy_matrix") or [[]])[-1]
    return {f"{FINAL_PREFIX}{letter}": value for letter, value in zip(task_letters(len(last)), last)}


def technique(method: str, lr: float, lr_labels: dict[str, str]) -> str:
    """The two-cities post's row names: "Baseline", "Baseline (low lr)"; other rates spelt out (as
    written when not a number: a failed job's `lr=${oops}`)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        return f"{method} (lr={lr})"
    label = lr_labels.get(f"{lr:g}", lr_labels.get(str(lr), f"lr={lr:g}"))
    return f"{method} ({label})" if label else method


def _stats(values: pd.Series) -> dict[str, float]:
    """Mean, sample std (ddof 1) and SEM of the non-missing values (NaN spread for one value)."""
    values = values.dropna().astype(float)
    if len(values) < 2:
        return {"": float(values.mean()) if len(values) else math.nan, "_std": math.nan, "_sem": math.nan}
    std = float(values.std(ddof=1))
    return {"": float(values.mean()), "_std": std, "_sem": std / math.sqrt(len(values))}


def _value_columns(runs: pd.DataFrame, metric: Metric) -> list[str]:
    tasks = sorted(c for c in runs.columns if c.startswith(metric.task) and c != metric.test)
    return [metric.val, *tasks, metric.test]


def _extra_columns(runs: pd.DataFrame) -> list[str]:
    """The records' columns of Settings.columns (`final`: FINAL_PREFIX and a task letter)."""
    return sorted(c for c in runs.columns if c.startswith(FINAL_PREFIX))


def experiment_row(group: pd.DataFrame, metric: Metric, values: list[str]) -> dict[str, Any]:
    """One experiment's row: the selected weights with the best mean val metric, their statistics."""
    first = group.iloc[0]
    name = first.method if first.lr_selected else technique(first.method, first.lr, json.loads(first.lr_labels))
    counts = {status: int((group.status == status).sum()) for status in NOT_OK}
    row: dict[str, Any] = {
        "Technique": name + (f" [cl_bench {first.version}]" if first.version else ""),
        "name": name, "sequence": first.sequence, "scenario": first.scenario, "method": first.method,
        "lr": first.lr, "version": first.version, "identity": first.identity, "choices": first.choices, **counts,
    }
    ok = group[group.status == "ok"]
    if ok.empty:
        state = next(status for status in NOT_OK if counts[status])
        errors = group.error[group.status == state].dropna()
        row.update(status=state, n=0, error=errors.iloc[0] if len(errors) else None)
        return row
    best_params = ok.groupby("params", sort=False)[metric.val].mean().fillna(-math.inf).idxmax()
    best = ok[ok.params == best_params]
    row.update(status="ok", params=best_params, shown_params=_shown_params(ok.params, best_params),
               n=len(best), best_run=best.run_dir.iloc[0], lr=best.lr.iloc[0])
    for column in [*values, "wall_time_s", "steps_per_s"]:
        if column in best:
            row.update({f"{column}{suffix}": value for suffix, value in _stats(best[column]).items()})
    return row


def _short(value: Any) -> str:
    """A config value as few characters as say it: 1e-4 as 0.0001, lists without spaces."""
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _shown_params(params: pd.Series, best: str) -> str:
    """The chosen values of the selected keys that take several values in the row."""
    seen: dict[str, set[str]] = {}
    for text in params:
        for key, value in json.loads(text).items():
            seen.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    chosen = json.loads(best)
    varied = [key for key in sorted(seen) if len(seen[key]) > 1]
    return ", ".join(f"{key.removeprefix('method.')}={_short(chosen[key])}" for key in varied)


def read_report_csv(path: Path) -> pd.DataFrame:
    """A report.csv as written: only empty cells are missing (a technique labelled "None", as van de
    Ven & Tolias's lower bound, stays a label; pandas' default reads it as missing)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def once_per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """Each experiment, selected weights and seed counted once: a run repeated in another folder given
    to the report is the same measurement again, not another seed. A finished run is kept over an
    unfinished one, else the last folder; the repeats are named in a warning."""
    ordered = runs.assign(_ok=runs.status == "ok").sort_values(["_ok", "run_dir"], kind="stable")
    repeated = ordered.duplicated(["identity", "version", "params", "seed"], keep="last")
    if repeated.any():
        log.warning("%d run(s) repeat an experiment, weights and seed already found; counted once: %s",
                    int(repeated.sum()), ", ".join(ordered.run_dir[repeated].head(5)))
    return ordered[~repeated].drop(columns="_ok").sort_index()


def score_table(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per experiment (identity, cl_bench version); rows that share a name get told apart."""
    metric = METRICS[settings.metric]
    values = [*_value_columns(runs, metric), *_extra_columns(runs)]
    groups = runs.groupby(["identity", "version"], sort=False)
    table = pd.DataFrame([experiment_row(group, metric, values) for _, group in groups])
    for _, same_name in table.groupby(["sequence", "scenario", "name", "version"], sort=False):
        if len(same_name) > 1:
            for index, suffix in zip(same_name.index, distinguishing_labels(same_name)):
                if suffix:
                    table.loc[index, "Technique"] = f"{table.loc[index, 'Technique']} · {suffix}"
    return table


def _features(rows: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Ways to tell rows apart, as (name, each row's value): config groups whose choice differs
    first (`model=mlp400`), then every differing config leaf under its shortest unambiguous name."""
    flats = [flatten(json.loads(text)) for text in rows.identity]
    choices = [json.loads(text) for text in rows.choices]
    leaves = sorted({key for flat in flats for key in flat if len({flat.get(key) for flat in flats}) > 1})
    groups = sorted({key.split(".")[0] for key in leaves})
    features = [
        (group, [str(c.get(group)) for c in choices])
        for group in groups
        if all(isinstance(c.get(group), str) for c in choices) and len({c[group] for c in choices}) > 1
    ]
    every_key = {key for flat in flats for key in flat}
    for key in leaves:
        shown = [_short(json.loads(flat[key])) if key in flat else "—" for flat in flats]
        features.append((_short_key(key, every_key), shown))
    return features


def _short_key(key: str, every_key: set[str]) -> str:
    """The shortest dotted suffix of `key` that no other key ends with."""
    parts = key.split(".")
    for start in range(len(parts) - 1, -1, -1):
        suffix = ".".join(parts[start:])
        if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in every_key):
            return suffix
    return key


def _common_value(values: list[str]) -> str | None:
    """The value most rows share, if one value is held by more rows than any other."""
    counts = pd.Series(values).value_counts()
    return counts.index[0] if len(counts) > 1 and counts.iloc[0] > max(1, counts.iloc[1]) else None


def distinguishing_labels(rows: pd.DataFrame) -> list[str]:
    """For rows sharing a name, `key=value, ...` over the fewest keys that tell them all apart; a
    row leaves out a key where it has the value most rows share ("" for the most common setting)."""
    features = _features(rows)
    for size in range(1, len(features) + 1):
        for chosen in combinations(features, size):
            if len({tuple(values[i] for _, values in chosen) for i in range(len(rows))}) == len(rows):
                return _labels(chosen, len(rows))
    raise AssertionError("two rows of one name and version have the same identity")


def _labels(chosen: tuple[tuple[str, list[str]], ...], n_rows: int) -> list[str]:
    """Each row's `name=value` of the chosen features, but where it has the value most rows share."""
    common = [_common_value(values) for _, values in chosen]
    return [
        ", ".join(f"{name}={values[i]}" for (name, values), usual in zip(chosen, common) if values[i] != usual)
        for i in range(n_rows)
    ]


def _cell(row: pd.Series, column: str, spread: str) -> str:
    mean = row.get(column)
    if mean is None or pd.isna(mean):
        return ""
    spread_value = row.get(f"{column}_{spread}")
    return f"{100 * mean:.1f}%" + ("" if pd.isna(spread_value) else f" ± {100 * spread_value:.1f}")


def _label(status: str) -> str:
    """A status as the table says it: "not run"."""
    return status.replace("_", " ")


def _n_text(row: pd.Series) -> str:
    """The chosen weights' ok seeds, then the row's jobs of every other status: "1 (1 failed, 2 not run)"."""
    extra = [f"{int(row[status])} {_label(status)}" for status in NOT_OK if row[status]]
    return str(int(row.n)) + (f" ({', '.join(extra)})" if extra else "")


def _state_cell(status: str) -> str:
    """A row without an ok job: its state, in bold but while it is running."""
    return _label(status) if status == "running" else f"**{_label(status)}**"


def markdown_table(table: pd.DataFrame, runs: pd.DataFrame, settings: Settings) -> str:
    """Technique | val metric | per task | test metric | best weights | n | cost, then what ± means."""
    metric = METRICS[settings.metric]
    values = _value_columns(runs, metric)
    extras = _extra_columns(runs)
    finals = [f"Final {c[len(FINAL_PREFIX) :]}" for c in extras]
    tasks = [c[len(metric.task) :] for c in values[1:-1]]
    several_sequences = table[["sequence", "scenario"]].drop_duplicates().shape[0] > 1
    header = (["Sequence"] if several_sequences else []) + ["Technique", metric.val_header]
    header += [metric.task_header.format(k) for k in tasks] + [metric.test_header]
    header += [*finals, "Best hyper-parameters", "n", "Wall (s)", "Steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [f"{row.sequence} ({row.scenario}-IL)"] if several_sequences else []
        cells.append(row.Technique)
        if row.status != "ok":
            cells += [_state_cell(row.status), *[""] * (len(values) + len(extras)), _n_text(row), "", ""]
        else:
            cells += [_cell(row, column, settings.spread) for column in [*values, *extras]]
            cells += [row.shown_params, _n_text(row), f"{row.wall_time_s:.1f}"]
            cells.append(f"{row.steps_per_s:.0f}" if not pd.isna(row.steps_per_s) else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMean ± {SPREADS[settings.spread]} over the n seeds of each row's chosen hyper-parameters "
            f"(chosen by {metric.val_header}, reported on {metric.test_header}).\n")
    if finals:
        note += f"\n{', '.join(finals)}: each task's validation accuracy after the last task.\n"
    return "\n".join(lines) + "\n" + note


def _job_folder(run_dir: str, out_dir: Path) -> str:
    """A run folder relative to the report's folder when it is under it, else as found."""
    try:
        return str(Path(run_dir).resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return run_dir


def _natural(text: str) -> list:
    """A sort key putting job 2 before job 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def job_list(runs: pd.DataFrame, table: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Every job counted, by folder: its row's Technique, folder, status, seed, overrides, error."""
    techniques = {(row.identity, row.version): row.Technique for row in table.itertuples()}
    jobs = [
        {"Technique": techniques[run.identity, run.version], "job": _job_folder(run.run_dir, out_dir),
         "status": run.status, "seed": run.seed, "overrides": run.overrides, "error": run.error}
        for run in runs.itertuples()
    ]
    return pd.DataFrame(sorted(jobs, key=lambda job: _natural(job["job"])), columns=JOB_COLUMNS)


def _md(value: Any) -> str:
    """A table cell: the first line of a text, "|" escaped."""
    return str(value).split("\n", 1)[0].replace("|", "\\|")


def jobs_markdown(jobs: pd.DataFrame) -> str:
    """The section under the table naming each failed, unreadable, interrupted or not-run job; "" if none."""
    listed = jobs[jobs.status.isin(LISTED)]
    if listed.empty:
        return ""
    lines = ["Jobs without a result (every job: jobs.csv):", "", "| Technique | Job | Status | Overrides | Error |",
             "|---|---|---|---|---|"]
    for job in listed.itertuples():
        overrides = "unknown" if pd.isna(job.overrides) else job.overrides or "none"
        error = "" if pd.isna(job.error) else job.error
        cells = [job.Technique, job.job, _label(job.status), overrides, error]
        lines.append("| " + " | ".join(map(_md, cells)) + " |")
    return "\n" + "\n".join(lines) + "\n"


def run_records(runs: list[Run], settings: Settings) -> list[dict[str, Any]]:
    """The runs as records; one whose config or summary holds values of the wrong shape is left out
    with a warning."""
    records = []
    for run in runs:
        try:
            records.append(run_record(run, settings))
        except (*READ_ERRORS, AttributeError, LookupError, TypeError) as error:
            log.warning("left out of the report: %s: its config or summary cannot be read (%s: %s)",
                        run.folder, type(error).__name__, one_line(error))
    return records


@dataclass
class Report:
    """A report made: its Markdown text, the table and job list it shows, the runs' records, and how many
    jobs ended in each status (a run folder left out of the report, its config unreadable, as "unreadable")."""

    text: str
    table: pd.DataFrame
    jobs: pd.DataFrame
    runs: pd.DataFrame
    statuses: Counter


def make_report(roots: list[Path], out_dir: Path, metric: str | None = None, spread: str | None = None,
                select: tuple[str, ...] = (), config_dirs: list[Path] | None = None,
                trusted: frozenset[tuple[str, str]] = frozenset(), columns: tuple[str, ...] = ()) -> Report:
    """Read the runs under `roots` and make their report (as `write_report`'s, without writing it)."""
    run_dirs = find_run_dirs(roots)
    where = ", ".join(map(str, roots))
    if not run_dirs:
        raise FileNotFoundError(f"no cl_bench runs under {where} (no folder there holds a "
                                f"{' or '.join(RUN_MARKERS)})")
    found = [run for run in (read_run(run_dir, config_dirs, trusted) for run_dir in run_dirs) if run is not None]
    settings = report_settings(found, metric, spread, select, columns)
    records = run_records(found, settings)
    if not records:
        raise FileNotFoundError(f"no readable cl_bench runs under {where}: the {len(run_dirs)} run folder(s) "
                                f"there were left out (see the warnings)")
    runs = once_per_seed(pd.DataFrame(records))
    table = score_table(runs, settings)
    jobs = job_list(runs, table, out_dir)
    notes = ""
    if settings.metric == "score":
        blank_unknown_tests(table, runs, METRICS["score"].test)
        notes = score_notes(table, runs)
    text = markdown_table(table, runs, settings) + notes + jobs_markdown(jobs)
    statuses = Counter(runs.status)
    if len(run_dirs) > len(records):
        statuses["unreadable"] += len(run_dirs) - len(records)
    return Report(text, table, jobs, runs, statuses)


def write_report(roots: list[Path], out_dir: Path, metric: str | None = None, spread: str | None = None,
                 select: tuple[str, ...] = (), config_dirs: list[Path] | None = None,
                 trusted: frozenset[tuple[str, str]] = frozenset(), columns: tuple[str, ...] = ()) -> str:
    """Read the runs under `roots`, write report.md, report.csv, jobs.csv and comparison.png to `out_dir`;
    the report's text. `metric`, `spread`, `select` and `columns` as `cl-bench-report`'s flags (None: the runs'
    `report:` config); `config_dirs`: config folders whose targets the runs' configs may name; `trusted`:
    more targets they may name (the sweep's own config's; both as engine.saved_config.check_targets')."""
    return write(make_report(roots, out_dir, metric, spread, select, config_dirs, trusted, columns), out_dir).text


def write(report: Report, out_dir: Path) -> Report:
    """The report's files in `out_dir` (only over the report's own files: results.report_files)."""
    check_report_folder(out_dir)
    table_csv = report.table.drop(columns=["name", "identity", "choices", "shown_params"], errors="ignore")
    write_report_files(out_dir, report.text, table_csv.to_csv(index=False), report.jobs.to_csv(index=False))
    curves = {
        row.Technique: read_metrics(Path(row.best_run))
        for _, row in report.table.iterrows()
        if row.status == "ok" and isinstance(row.get("best_run"), str)
    }
    curves = {label: frame for label, frame in curves.items() if not frame.empty}
    if curves:
        plot_comparison(curves, out_dir / COMPARISON_FIGURE)
    return report


def write_sweep_report(config: DictConfig) -> Counter:
    """At the end of a multirun: write and print the table of its jobs (with the sweep config's `report:`
    settings; and log it to W&B with `logger=wandb`); how many jobs ended in each status. FileNotFoundError
    or ValueError when there is no report to make."""
    sweep_dir = Path(config.hydra.sweep.dir)
    report = write(make_report(
        [sweep_dir], sweep_dir,
        metric=OmegaConf.select(config, "report.metric", default=None),
        spread=OmegaConf.select(config, "report.spread", default=None),
        select=tuple(OmegaConf.select(config, "report.select", default=None) or ()),
        trusted=targets_of({**OmegaConf.to_container(config, resolve=False), "hydra": None}),
        columns=tuple(OmegaConf.select(config, "report.columns", default=None) or ()),
    ), sweep_dir)
    print(f"\nResults table ({sweep_dir / REPORT_MARKDOWN}):\n\n{report.text}")
    publish_to_wandb(config, sweep_dir)
    return report.statuses


def publish_to_wandb(config: DictConfig, sweep_dir: Path) -> None:
    """With `logger=wandb`, log the sweep's table to W&B (a run of job_type report); wandb is imported
    only then."""
    if OmegaConf.select(config, "logger._target_") != WANDB_LOGGER:
        return
    from cl_bench.loggers.wandb_report import publish_report

    publish_report(config, sweep_dir)
