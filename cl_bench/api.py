"""cl_bench from Python (and notebooks): compose a run's config, run it in this process, read runs back, the
report's table, a sweep. The same functions as the command line's: a run here writes the run folder `cl-bench`
writes (so `resume=`, `cl-bench-report` and W&B work on it), and the runs, tables and sweeps read here are the
report's, read as it reads them.

    import cl_bench
    run = cl_bench.run(["method=ewc", "method.lambda=100"])      # or cl_bench.run(cl_bench.compose([...]))
    run.score, run.accuracy_matrix, run.curves(), run.figure()
    cl_bench.runs("outputs/multirun")                            # a DataFrame: a row per run
    cl_bench.table("outputs/multirun/2026-12-07/10-00-00-000000")  # the report's table
    cl_bench.paper_table("outputs/multirun/...").to_latex()      # the same, for a paper
    cl_bench.sweep(["method=baseline,ewc", "seed=0,1"])          # `cl-bench -m ...`, its table

A run started here honours Ctrl-C as `cl-bench` does (a checkpoint, then KeyboardInterrupt), never exits the
interpreter, and leaves the logging configuration and the working directory as it found them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from cl_bench.core.accuracy import ROW_PREFIX
from cl_bench.core.experiment import flatten
from cl_bench.core.layout import CONFIG_DIR, CONFIG_FILE, HYDRA_FILES, HYDRA_RECORD, REPORT_CSV
from cl_bench.core.overrides import override_keys
from cl_bench.records.run_folder import ForeignFolder, check_folder_to_write
from cl_bench.records.saved_config import targets_of

if TYPE_CHECKING:
    from cl_bench.report.paper import PaperTable

RESULTS_LINE = re.compile(r"^Results table \((?P<report>.+)\):$")  # what a sweep prints before its table


class RunRefused(RuntimeError):
    """A run that could not start where it was asked to (another process's folder, another config's run, a
    `resume=` that cannot be done): nothing was written."""


class Run:
    """A run folder as the report reads it (report/read.py): its config, its summary (None while it runs),
    and its figures as pandas DataFrames."""

    def __init__(self, folder: str | Path, config: DictConfig, summary: dict | None):
        self.folder = Path(folder)
        self.config = config
        self.summary = summary

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}, status={self.status!r}, score={self.score!r})"

    @property
    def status(self) -> str:
        """ok, failed, interrupted, cancelled, not_run, running, killed or unreadable (docs/outputs.md)."""
        return (self.summary or {"status": "running"})["status"]

    @property
    def score(self) -> float | None:
        """The Score (the peak-average validation accuracy over the last task's training), or None."""
        return (self.summary or {}).get("score")

    @property
    def tasks(self) -> list[str]:
        return list((self.summary or {}).get("tasks") or [])

    @property
    def metrics(self) -> pd.DataFrame:
        """The run's metrics.jsonl: a row per evaluation point (docs/outputs.md#the-metrics-rows)."""
        from cl_bench.records.metrics_log import read_metrics

        return read_metrics(self.folder)

    @property
    def accuracy_matrix(self) -> pd.DataFrame:
        """R[i][j], the test accuracy of task j after training task i: a row per task trained, a column per task."""
        matrix = (self.summary or {}).get("accuracy_matrix") or []
        names = self.tasks or [str(j) for j in range(len(matrix))]
        return pd.DataFrame(matrix, index=pd.Index(names[: len(matrix)], name="after"),
                            columns=pd.Index(names, name="task"))

    def curves(self) -> pd.DataFrame:
        """Every validation accuracy of the run in long form: step, task trained, task, accuracy kind
        (scenario, task_aware), value."""
        metrics = self.metrics
        frames = []
        for kind, prefix in ROW_PREFIX.items():
            columns = [c for c in metrics.columns if c.startswith(f"val{prefix}/")]
            if columns:
                long = metrics.melt(id_vars=["step", "task"], value_vars=columns, var_name="of", value_name="value")
                long["of"] = long["of"].str.removeprefix(f"val{prefix}/")
                frames.append(long.assign(kind=kind))
        if not frames:
            return pd.DataFrame(columns=["step", "trained", "task", "kind", "value"])
        frame = pd.concat(frames, ignore_index=True).rename(columns={"task": "trained", "of": "task"})
        return frame[["step", "trained", "task", "kind", "value"]]

    def figure(self):
        """The run's curve figure (curves.png) as a matplotlib Figure."""
        from cl_bench.records.figures import curves_figure

        rows = self.metrics.to_dict("records")
        return curves_figure(rows, f"{(self.summary or {}).get('method', 'run')} (lr={(self.summary or {}).get('lr')})")


def compose(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The config `cl-bench <overrides>` runs (Hydra's own node under `hydra`), checked as `cl-bench` checks it
    before anything is read or trained: cl_bench.core.errors.ConfigError on a value that cannot work.
    `config_dir`: a config folder of your own (as `cl-bench --config-dir`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cl_bench.engine.validate import check_listed_once, validate_config
    from cl_bench.methods.build import build_methods

    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = hydra_compose("config", overrides, return_hydra_config=True)
    task = task_config(config)
    check_listed_once(overrides)
    if not task.get("resume"):
        validate_config(task)
        build_methods(task)
    return config


def task_config(config: DictConfig) -> DictConfig:
    """`config` without Hydra's own node: what a run computes with."""
    task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    return task


def _record_start(folder: Path, config: DictConfig) -> None:
    """Hydra's record of a start in `folder` (.hydra/: the config, Hydra's node, the overrides), as `cl-bench`
    leaves it: the run keeps a copy of it (its config group choices name the report's rows)."""
    hydra = OmegaConf.create({"hydra": config.hydra})
    with open_dict(hydra):
        hydra.hydra.runtime.output_dir = str(folder.resolve())
    record = folder / HYDRA_RECORD
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(task_config(config), record / CONFIG_FILE)
    OmegaConf.save(hydra, record / HYDRA_FILES[0])
    OmegaConf.save(config.hydra.overrides.task, record / HYDRA_FILES[1])


def run(config: DictConfig | Sequence[str] = (), folder: str | Path | None = None) -> Run:
    """Run `config` (a `compose`d config, or the overrides to compose) in this process, in `folder` (default:
    the run folder `cl-bench` would make, `<output_root>/runs/<date>/<time>`); its Run when it ended (ok or
    not: see `.status`). `resume=<run folder>` continues that run in its own folder. Ctrl-C checkpoints the run,
    then raises KeyboardInterrupt."""
    from cl_bench.engine.run import run_experiment

    config = config if isinstance(config, DictConfig) else compose(config)
    task = task_config(config)
    given = OmegaConf.to_container(config.hydra.overrides.task, resolve=False) if "hydra" in config else []
    if task.get("resume"):
        folder = Path(task.resume).expanduser()
    else:
        folder = Path(folder if folder is not None else config.hydra.run.dir).expanduser()
        try:
            check_folder_to_write(folder)
        except ForeignFolder as error:
            raise RunRefused(str(error)) from None
        if "hydra" in config:
            _record_start(folder, config)
    summary = run_experiment(task, folder, override_keys=override_keys(given))
    if summary["status"] == "refused":
        raise RunRefused(summary["error"])
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt(summary["error"])
    (loaded,) = _read(folder, trusted=targets_of(task))  # the targets it ran with are its own
    return loaded


def load(*folders: str | Path, config_dirs: Sequence[str | Path] = ()) -> list[Run]:
    """The runs under `folders` (run folders, sweep folders, any folder holding them), read as the report reads
    them: a run whose config is unreadable or unsafe is left out with a warning, a summary the report cannot use
    makes the run "unreadable". `config_dirs`: config folders of your own that the runs' configs name targets of."""
    return _read(*folders, config_dirs=config_dirs)


def _read(*folders: str | Path, config_dirs: Sequence[str | Path] = (),
          trusted: frozenset[tuple[str, str]] = frozenset()) -> list[Run]:
    """`load`, with `trusted` (records.saved_config.targets_of) the places and targets this process ran with."""
    from cl_bench.report.read import find_run_dirs, read_run

    dirs = [Path(folder) for folder in folders]
    found = (read_run(run_dir, [Path(d) for d in config_dirs], trusted) for run_dir in find_run_dirs(dirs))
    return [Run(run.folder, run.config, run.summary) for run in found if run is not None]


def runs(*folders: str | Path, config_dirs: Sequence[str | Path] = ()) -> pd.DataFrame:
    """A row per run under `folders` (as `load`): its folder and status, its config's keys flattened (`lr`,
    `method._target_`, `method.kappa`, ...) and its summary's figures (`score`, `score_test`, `score_k.A`, ...)."""
    rows = []
    for found in load(*folders, config_dirs=config_dirs):
        row: dict[str, Any] = {"folder": str(found.folder), "status": found.status}
        config = OmegaConf.to_container(found.config, resolve=True, throw_on_missing=False)
        row.update({key: json.loads(value) for key, value in flatten(config).items()})
        for key, value in (found.summary or {}).items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                row.setdefault(key, value)
            elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
                row.update({f"{key}.{name}": v for name, v in value.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def table(*folders: str | Path, metric: str | None = None, spread: str | None = None, select: Sequence[str] = (),
          columns: Sequence[str] = (), config_dirs: Sequence[str | Path] = ()) -> pd.DataFrame:
    """The report's table of the runs under `folders`, as report.csv holds it (a row per experiment: its
    Technique, figures with their `_std` and `_sem`, counts per status); the options as `cl-bench-report`'s."""
    from cl_bench.report.make import csv_table, make_report

    dirs = [Path(folder) for folder in folders]
    report = make_report(dirs, dirs[0], metric, spread, tuple(select), [Path(d) for d in config_dirs],
                         columns=tuple(columns))
    return csv_table(report).reset_index(drop=True)


def paper_table(*folders: str | Path, precision: int = 1, metric: str | None = None, spread: str | None = None,
                select: Sequence[str] = (), columns: Sequence[str] = (),
                config_dirs: Sequence[str | Path] = ()) -> PaperTable:
    """The report's table for a paper: each figure as mean ± spread in percent at `precision` decimals, n, the
    best of each column in bold; a pandas Styler, shown as a table in a notebook, whose `.to_latex()` is the
    table `cl-bench-report --format latex` prints (`.data`: the table of texts)."""
    from cl_bench.report.make import make_report
    from cl_bench.report.paper import paper_table as styled

    dirs = [Path(folder) for folder in folders]
    report = make_report(dirs, dirs[0], metric, spread, tuple(select), [Path(d) for d in config_dirs],
                         columns=tuple(columns))
    return styled(report, report.settings, precision)


def sweep(overrides: Sequence[str], launcher: str | None = None) -> pd.DataFrame:
    """`cl-bench -m <overrides>` (with `hydra/launcher=<launcher>`) in a subprocess, its lines shown as they come;
    the sweep's table (report.csv) when it ends. Ctrl-C stops the sweep as on the command line (its running job
    checkpoints), then raises KeyboardInterrupt. RuntimeError when the sweep ended without a table."""
    command = [sys.executable, "-m", "cl_bench.cli.app", "--multirun", *overrides]
    command += [f"hydra/launcher={launcher}"] if launcher else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    report, last = None, ""
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            last = line.strip() or last
            if found := RESULTS_LINE.match(line.strip()):
                report = Path(found["report"])
        process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait()
        raise
    if report is None or not (report.parent / REPORT_CSV).is_file():
        raise RuntimeError(f"the sweep ended without a table (exit code {process.returncode}): {last}")
    from cl_bench.report.make import read_report_csv

    return read_report_csv(report.parent / REPORT_CSV)
