"""The results table of a set of runs (the two-cities post's shape) as Markdown and CSV, and the comparison figure.

`cl-bench-report DIR...` reads every run folder under the given run or multirun folders; the
`ReportCallback` does the same at the end of a multirun. A row is one experiment: runs share it only
when their configs (cl_bench.experiment_keys) agree on everything but the seed and the weights being
selected over (the method's `selectable` and `--select` keys). Within a row the weights with the best
mean validation metric over seeds are chosen, and that choice's test metric is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cl_bench import __version__
from cl_bench.experiment_keys import experiment_identity, flatten
from cl_bench.figures import plot_comparison
from cl_bench.metrics import task_letters
from cl_bench.metrics_log import METRICS_FILE, read_metrics
from cl_bench.summary import SUMMARY_FILE

log = logging.getLogger(__name__)

DEFAULT_LR_LABELS = {"0.001": "", "0.0001": "low lr"}
WANDB_LOGGER = "cl_bench.loggers.wandb.WandbLogger"
SPREADS = {"std": "sample std", "sem": "SEM (sample std / √n)"}


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
    """How the table is made: `metric` (a METRICS key), `spread` (std | sem), extra `select` keys."""

    metric: str = "score"
    spread: str = "std"
    select: tuple[str, ...] = ()


@dataclass
class Run:
    """A run folder's config (unresolved), summary (None while running) and Hydra group choices."""

    folder: Path
    config: DictConfig
    summary: dict | None
    choices: dict[str, Any]


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Folders under `roots` that hold a run: a summary, or metrics of a run still going."""
    found = set()
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"no such run or multirun folder: {root}")
        for marker in (SUMMARY_FILE, METRICS_FILE, ".hydra/config.yaml"):
            found.update(p.parent for p in root.rglob(marker) if p.parent.name != ".hydra")
            found.update(p.parent.parent for p in root.rglob(marker) if p.parent.name == ".hydra")
    return sorted(found)


def _choices(run_dir: Path) -> dict[str, Any]:
    """The run's config group choices (`model: mlp400`) from .hydra/hydra.yaml, if readable."""
    path = run_dir / ".hydra" / "hydra.yaml"
    choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices") if path.exists() else None
    return OmegaConf.to_container(choices, resolve=False) if choices is not None else {}


def read_run(run_dir: Path) -> Run | None:
    """The run in `run_dir`, or None (with a warning) when it has no .hydra/config.yaml."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.exists():
        log.warning("left out of the report: %s has no .hydra/config.yaml", run_dir)
        return None
    path = run_dir / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else None
    return Run(run_dir, OmegaConf.load(config_path), summary, _choices(run_dir))


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
                    select: tuple[str, ...] = ()) -> Settings:
    """Flags win over the runs' `report:` config; `select` adds to every run's `report.select`."""
    keys = set(select)
    for run in runs:
        keys.update(_plain(OmegaConf.select(run.config, "report.select", default=None)) or [])
    return Settings(
        metric=_agreed(runs, "metric", metric, "score", METRICS),
        spread=_agreed(runs, "spread", spread, "std", SPREADS),
        select=tuple(sorted(keys)),
    )


@lru_cache(maxsize=None)
def method_selectable(target: str | None) -> tuple[str, ...]:
    """`method.<name>` for the method class's `selectable`; none if the class cannot be imported."""
    try:
        return tuple(f"method.{name}" for name in get_class(target).selectable)
    except Exception:  # noqa: BLE001 (an unknown or broken target: nothing to select over)
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
    """"" for the current cl_bench (and runs still going); else the version that made the run."""
    if summary is None:
        return ""
    version = (summary.get("versions") or {}).get("cl_bench")
    return "" if version == __version__ else version or "unknown"


def _method_label(config: DictConfig, target: str | None) -> str:
    """`method.label`, else the method's class name."""
    return OmegaConf.select(config, "method.label", default=None) or str(target).rsplit(".", 1)[-1]


def run_record(run: Run, settings: Settings) -> dict[str, Any]:
    """One run as a flat record: its identity, selected weights, status and metric values."""
    summary = run.summary or {"status": "running"}
    config = run.config
    target = OmegaConf.select(config, "method._target_", default=None)
    selected = [*method_selectable(target), *settings.select]
    full = experiment_identity(config)
    lr_labels = _plain(OmegaConf.select(config, "report.lr_labels", default=None)) or DEFAULT_LR_LABELS
    record = {
        "run_dir": str(run.folder),
        "status": summary.get("status"),
        "error": summary.get("error"),
        "method": summary.get("method") or _method_label(config, target),
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
    return record


def technique(method: str, lr: float, lr_labels: dict[str, str]) -> str:
    """The two-cities post's row names: "Baseline", "Baseline (low lr)"; other rates spelt out."""
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


def experiment_row(group: pd.DataFrame, metric: Metric, values: list[str]) -> dict[str, Any]:
    """One experiment's row: the selected weights with the best mean val metric, their statistics."""
    first = group.iloc[0]
    name = first.method if first.lr_selected else technique(first.method, first.lr, json.loads(first.lr_labels))
    failed = int((group.status == "failed").sum())
    row: dict[str, Any] = {
        "Technique": name + (f" [cl_bench {first.version}]" if first.version else ""),
        "name": name, "sequence": first.sequence, "scenario": first.scenario, "method": first.method,
        "lr": first.lr, "version": first.version, "identity": first.identity, "choices": first.choices,
        "failed": failed, "running": int(group.status.isin(["running", "interrupted"]).sum()),
    }
    ok = group[group.status == "ok"]
    if ok.empty:
        row.update(status="failed" if failed else "running", error=group.error.dropna().iloc[0] if failed else None)
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
    values = _value_columns(runs, metric)
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


def _n_text(row: pd.Series) -> str:
    extra = [f"{int(row[key])} {key}" for key in ("failed", "running") if row[key]]
    return str(int(row.n)) + (f" ({', '.join(extra)})" if extra else "")


def markdown_table(table: pd.DataFrame, runs: pd.DataFrame, settings: Settings) -> str:
    """Technique | val metric | per task | test metric | best weights | n | cost, then what ± means."""
    metric = METRICS[settings.metric]
    values = _value_columns(runs, metric)
    tasks = [c[len(metric.task) :] for c in values[1:-1]]
    several_sequences = table[["sequence", "scenario"]].drop_duplicates().shape[0] > 1
    header = (["Sequence"] if several_sequences else []) + ["Technique", metric.val_header]
    header += [metric.task_header.format(k) for k in tasks] + [metric.test_header, "Best hyper-parameters", "n"]
    header += ["Wall (s)", "Steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [f"{row.sequence} ({row.scenario}-IL)"] if several_sequences else []
        cells.append(row.Technique)
        if row.status != "ok":
            cells += ["**failed**" if row.status == "failed" else "running"]
            cells += [""] * (len(header) - len(cells))
        else:
            cells += [_cell(row, column, settings.spread) for column in values]
            cells += [row.shown_params, _n_text(row), f"{row.wall_time_s:.1f}"]
            cells.append(f"{row.steps_per_s:.0f}" if not pd.isna(row.steps_per_s) else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMean ± {SPREADS[settings.spread]} over the n seeds of each row's chosen hyper-parameters "
            f"(chosen by {metric.val_header}, reported on {metric.test_header}).\n")
    return "\n".join(lines) + "\n" + note


def write_report(roots: list[Path], out_dir: Path, metric: str | None = None, spread: str | None = None,
                 select: tuple[str, ...] = ()) -> str:
    """Read the runs under `roots`, write report.md, report.csv and comparison.png to `out_dir`.
    `metric`, `spread` and `select` as `cl-bench-report`'s flags (None: the runs' `report:` config)."""
    found = [run for run in map(read_run, find_run_dirs(roots)) if run is not None]
    if not found:
        raise FileNotFoundError(f"no cl_bench runs under {', '.join(map(str, roots))}")
    settings = report_settings(found, metric, spread, select)
    runs = once_per_seed(pd.DataFrame([run_record(run, settings) for run in found]))
    table = score_table(runs, settings)
    text = markdown_table(table, runs, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(text)
    table.drop(columns=["name", "identity", "choices", "shown_params"], errors="ignore").to_csv(
        out_dir / "report.csv", index=False
    )
    curves = {
        row.Technique: read_metrics(Path(row.best_run))
        for _, row in table.iterrows()
        if row.status == "ok" and isinstance(row.get("best_run"), str)
    }
    curves = {label: frame for label, frame in curves.items() if not frame.empty}
    if curves:
        plot_comparison(curves, out_dir / "comparison.png")
    return text


class ReportCallback(Callback):
    """At the end of a multirun, writes and prints the table of its jobs (with the sweep config's
    `report:` settings; and logs it to W&B with `logger=wandb`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            text = write_report(
                [sweep_dir], sweep_dir,
                metric=OmegaConf.select(config, "report.metric", default=None),
                spread=OmegaConf.select(config, "report.spread", default=None),
                select=tuple(OmegaConf.select(config, "report.select", default=None) or ()),
            )
        except (FileNotFoundError, ValueError) as error:
            log.warning("no report: %s", error)
            return
        print(f"\nResults table ({sweep_dir}/report.md):\n\n{text}")
        publish_to_wandb(config, sweep_dir)


def publish_to_wandb(config: DictConfig, sweep_dir: Path) -> None:
    """With `logger=wandb`, log the sweep's table to W&B (a run of job_type report); wandb is imported
    only then."""
    if OmegaConf.select(config, "logger._target_") != WANDB_LOGGER:
        return
    from cl_bench.loggers.wandb_report import publish_report

    publish_report(config, sweep_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cl-bench-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first folder)")
    parser.add_argument("--metric", choices=sorted(METRICS), default=None,
                        help="score: peak-average Score | final_accuracy: mean accuracy after the last task "
                             "(default: the runs' report.metric)")
    parser.add_argument("--spread", choices=sorted(SPREADS), default=None,
                        help="the ± of the table: sample std or SEM (default: the runs' report.spread)")
    parser.add_argument("--select", nargs="+", action="extend", default=[], metavar="KEY",
                        help="more dotted config keys to select the best value of by validation (e.g. lr)")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.dirs, args.out or args.dirs[0], args.metric, args.spread, tuple(args.select))
    except ValueError as error:
        parser.exit(2, f"cl-bench-report: error: {error}\n")
    print(text)


if __name__ == "__main__":
    main()
