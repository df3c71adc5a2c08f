"""Reading run folders for the report: every folder under the given roots that holds a run, each read as data
into a `RunFolder` (its config, summary, Hydra choices and overrides) or left out with a one-line warning.

A run's config is the one it started with, `<run>/.cl_bench/config.yaml` (with `hydra.yaml` and
`overrides.yaml` beside it); run folders of earlier versions have only Hydra's `.hydra/`, which Hydra rewrites
at every start in the folder, so it is read only where `.cl_bench/` has no config. A saved config is data: it is
read by records.saved_config before anything in it is resolved or imported. A missing, truncated, invalid or
unsafe config leaves its run out; a summary the report cannot use (report.summary_check) counts its job as
"unreadable"; a folder without a summary is "running" while a process holds its lock, else "killed"."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_bench.core.errors import one_line
from cl_bench.core.experiment import at
from cl_bench.core.files import read_data
from cl_bench.core.layout import CONFIG_FILE, HYDRA_RECORD, METRICS_FILE, STATE_DIR, SUMMARY_FILE
from cl_bench.core.status import STATUSES
from cl_bench.records.run_folder import is_running, saved_config_path, state_dir
from cl_bench.records.saved_config import MAX_CONFIG_BYTES, UnsafeConfig, load_yaml_data, read_saved_config
from cl_bench.report.summary_check import summary_problem

log = logging.getLogger(__name__)

RUN_MARKERS = (SUMMARY_FILE, METRICS_FILE, f"{STATE_DIR}/{CONFIG_FILE}", f"{HYDRA_RECORD}/{CONFIG_FILE}")
REQUIRED_KEYS = ("method._target_", "model._target_", "dataset", "seed")  # in every cl_bench run's config
# What reading a saved file may raise: the file, its encoding, its YAML / JSON, OmegaConf's grammar.
READ_ERRORS = (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException)
MAX_SUMMARY_BYTES = 10_000_000  # a summary is a few kilobytes


@dataclass
class RunFolder:
    """A run folder's config (unresolved), summary (None while running), Hydra group choices and command-line
    overrides (None when unknown)."""

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
    """A saved run config, read as data (records.saved_config; `config_dirs` and `trusted` as there); ValueError
    unless it is a whole one (it ends as a written YAML file ends, with a newline, and holds the keys every
    run's config has)."""
    config = read_saved_config(path, config_dirs, trusted).config
    if not read_data(path, MAX_CONFIG_BYTES).endswith(b"\n"):
        raise ValueError("truncated (it does not end with a newline)")
    tree = OmegaConf.to_container(config, resolve=False)
    missing = [key for key in REQUIRED_KEYS if at(tree, key) is None]
    if missing:
        raise ValueError(f"no {', '.join(missing)} (truncated, or not a cl_bench run's config)")
    return config


def unreadable(path: Path, reason: str) -> dict:
    """The summary of a job whose summary.json cannot be used, and a warning saying why."""
    log.warning("%s cannot be read (%s): its job is counted as unreadable", path, reason)
    return {"status": "unreadable", "error": f"{path.name}: {reason}"}


def read_summary(path: Path, config: DictConfig) -> dict | None:
    """The job's summary: None while none is written; status "unreadable" (with a warning) when it cannot be
    read, is not a cl_bench summary, or holds what the report cannot use (report.summary_check)."""
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
             trusted: frozenset[tuple[str, str]] = frozenset()) -> RunFolder | None:
    """The run in `run_dir`, or None (with a warning naming what was not read) when it has no run's
    config, an unreadable one, or one that is not safe to read (records.saved_config: checked before anything
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
    return RunFolder(run_dir, config, summary, _choices(saved / "hydra.yaml"), _overrides(saved / "overrides.yaml"))
