"""The Score table of a set of runs (seed 000's shape) as Markdown and CSV, and the comparison figure.

`cl-bench-report DIR...` reads every run folder under the given run or multirun folders; the
`ReportCallback` does the same at the end of a multirun. Rows are keyed by task sequence, method and
effective learning rate; within a row the hyper-parameters with the best mean validation Score over
seeds are chosen, and that choice's test Score is reported (selection on val, report on test).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cl_bench.figures import plot_comparison
from cl_bench.metrics_log import METRICS_FILE, read_metrics
from cl_bench.summary import SUMMARY_FILE

log = logging.getLogger(__name__)

DEFAULT_LR_LABELS = {"0.001": "", "0.0001": "low lr"}
WANDB_LOGGER = "cl_bench.loggers.wandb.WandbLogger"


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


def _run_config(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    config = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception:  # an interpolation needing Hydra's runtime: keep the raw values
        return OmegaConf.to_container(config, resolve=False)


def read_run(run_dir: Path) -> dict[str, Any]:
    """One run as a flat record; a run without summary is `running`."""
    path = run_dir / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else {"status": "running"}
    config = _run_config(run_dir)
    record = {
        "run_dir": str(run_dir),
        "status": summary.get("status"),
        "error": summary.get("error"),
        "method": summary.get("method") or config.get("method", {}).get("label"),
        "lr": summary.get("lr", config.get("lr")),
        "params": json.dumps(summary.get("method_params", {}), sort_keys=True),
        "seed": summary.get("seed", config.get("seed")),
        "sequence": "+".join(summary.get("datasets") or list(config.get("dataset", {}).keys())),
        "scenario": summary.get("scenario", config.get("scenario")),
        "score": summary.get("score"),
        "score_test": summary.get("score_test"),
        "wall_time_s": summary.get("wall_time_s"),
        "steps_per_s": summary.get("steps_per_s"),
        "lr_labels": json.dumps(config.get("report", {}).get("lr_labels", DEFAULT_LR_LABELS)),
    }
    for letter, value in (summary.get("score_k") or {}).items():
        record[f"score_{letter}"] = value
    for letter, value in (summary.get("score_test_k") or {}).items():
        record[f"score_test_{letter}"] = value
    return record


def technique(method: str, lr: float, lr_labels: dict[str, str]) -> str:
    """Seed 000's row names: "Baseline", "Baseline (low lr)"; other rates spelt out."""
    label = lr_labels.get(f"{lr:g}", lr_labels.get(str(lr), f"lr={lr:g}"))
    return f"{method} ({label})" if label else method


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    return float(values.mean()), float(values.std(ddof=0)) if len(values) else float("nan")


def score_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (sequence, scenario, method, lr): the best hyper-parameters by mean val Score."""
    rows = []
    letters = sorted(c[len("score_") :] for c in runs.columns if c.startswith("score_") and "test" not in c)
    for (sequence, scenario, method, lr), group in runs.groupby(["sequence", "scenario", "method", "lr"], sort=False):
        ok = group[group.status == "ok"]
        failed = int((group.status == "failed").sum())
        running = int(group.status.isin(["running", "interrupted"]).sum())
        row: dict[str, Any] = {
            "Technique": technique(method, lr, json.loads(group.lr_labels.iloc[0])),
            "sequence": sequence,
            "scenario": scenario,
            "method": method,
            "lr": lr,
            "failed": failed,
            "running": running,
        }
        if ok.empty:
            row.update(status="failed" if failed else "running", error=group.error.dropna().iloc[0] if failed else None)
            rows.append(row)
            continue
        by_params = ok.groupby("params")["score"].mean()
        best_params = by_params.idxmax()
        best = ok[ok.params == best_params]
        row.update(status="ok", params=best_params, seeds=len(best), best_run=best.run_dir.iloc[0])
        for column in ["score", "score_test", "wall_time_s", "steps_per_s"] + [f"score_{k}" for k in letters]:
            if column in best:
                row[column], row[f"{column}_std"] = _mean_std(best[column])
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(mean: float, std: float, seeds: int) -> str:
    if pd.isna(mean):
        return ""
    return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if seeds > 1 else "")


def _params_text(params: str, varied: set[str]) -> str:
    values = json.loads(params) if isinstance(params, str) else {}
    return ", ".join(f"{k}={v}" for k, v in values.items() if k in varied)


def _varied_params(runs: pd.DataFrame) -> set[str]:
    """Hyper-parameters that take more than one value among the runs (those worth naming)."""
    seen: dict[str, set] = {}
    for params in runs.params:
        for key, value in json.loads(params).items():
            seen.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return {key for key, values in seen.items() if len(values) > 1}


def markdown_table(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Technique | Score | Score_A | Score_B | ... | test Score | best params | seeds | cost."""
    letters = sorted(c[len("score_") :] for c in runs.columns if c.startswith("score_") and "test" not in c)
    varied = _varied_params(runs)
    several_sequences = table[["sequence", "scenario"]].drop_duplicates().shape[0] > 1
    header = (["Sequence"] if several_sequences else []) + ["Technique", "Score"]
    header += [f"Score_{k}" for k in letters] + ["Test Score", "Best hyper-parameters", "Seeds", "Wall (s)", "Steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [f"{row.sequence} ({row.scenario}-IL)"] if several_sequences else []
        cells.append(row.Technique)
        if row.status != "ok":
            note = "**failed**" if row.status == "failed" else "running"
            cells += [note] + [""] * (len(header) - len(cells) - 1)
        else:
            seeds = int(row.seeds)
            cells.append(_percent(row.score, row.score_std, seeds))
            cells += [_percent(row.get(f"score_{k}"), row.get(f"score_{k}_std"), seeds) for k in letters]
            cells.append(_percent(row.score_test, row.score_test_std, seeds))
            cells.append(_params_text(row.params, varied))
            extra = []
            if row.failed:
                extra.append(f"{int(row.failed)} failed")
            if row.running:
                extra.append(f"{int(row.running)} running")
            cells.append(str(seeds) + (f" ({', '.join(extra)})" if extra else ""))
            cells.append(f"{row.wall_time_s:.1f}")
            cells.append(f"{row.steps_per_s:.0f}" if not pd.isna(row.steps_per_s) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(roots: list[Path], out_dir: Path) -> str:
    """Read the runs under `roots`, write report.md, report.csv and comparison.png to `out_dir`."""
    runs = pd.DataFrame([read_run(d) for d in find_run_dirs(roots)])
    if runs.empty:
        raise FileNotFoundError(f"no cl_bench runs under {', '.join(map(str, roots))}")
    runs = runs.dropna(subset=["method", "lr"])
    table = score_table(runs)
    text = markdown_table(table, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(text)
    table.to_csv(out_dir / "report.csv", index=False)
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
    """At the end of a multirun, writes and prints the Score table of its jobs (and logs it to W&B
    with `logger=wandb`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            text = write_report([sweep_dir], sweep_dir)
        except FileNotFoundError as error:
            log.warning("no report: %s", error)
            return
        print(f"\nScore table ({sweep_dir}/report.md):\n\n{text}")
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
    args = parser.parse_args(argv)
    text = write_report(args.dirs, args.out or args.dirs[0])
    print(text)


if __name__ == "__main__":
    main()
