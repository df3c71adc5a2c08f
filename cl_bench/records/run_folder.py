"""A run folder's own records, kept apart from Hydra's `.hydra/` (which Hydra rewrites on every start,
before our code runs): the config the run started with, copies of Hydra's files of that start, and a
lock held while a process works in the folder. A run folder belongs to one experiment and seed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from cl_bench.core.experiment import at, differing_keys, experiment_identity
from cl_bench.core.files import copy_file, read_data, write_text
from cl_bench.core.layout import CHECKPOINTS_DIR, CONFIG_FILE, HYDRA_FILES, HYDRA_RECORD, LOG_SUFFIX, STATE_DIR
from cl_bench.records.saved_config import SavedConfig, read_saved_config


class ConfigMismatch(ValueError):
    """A run folder asked to continue with a config other than the one it started with."""


class FolderInUse(RuntimeError):
    """Another process holds the run folder's lock."""


class ForeignFolder(ValueError):
    """A folder given to a run that holds files no cl_bench run made: it is never written into."""


def state_dir(run_dir: Path) -> Path:
    return run_dir / STATE_DIR


def saved_config_path(run_dir: Path) -> Path:
    return state_dir(run_dir) / CONFIG_FILE


def load_saved_config(run_dir: Path, trusted: Iterable[tuple[str, str]] | None = None) -> SavedConfig | None:
    """The config the run in `run_dir` started with, read as data (engine.saved_config; `trusted` as there:
    None to compare it only), or None for a folder without one."""
    path = saved_config_path(run_dir)
    return read_saved_config(path, trusted=trusted) if path.exists() else None


class NotResumable(ValueError):
    """`resume=` given a folder that holds no run this cl_bench can continue."""


def check_resumable(folder: Path, given: str) -> None:
    """NotResumable unless `folder` (`resume=given`) holds a run's saved config, checked before anything
    is written there."""
    if saved_config_path(folder).is_file():
        return
    if (folder / HYDRA_RECORD / CONFIG_FILE).is_file():
        raise NotResumable(
            f"resume={given}: this run was made by an earlier cl_bench (before 0.3), whose runs cannot be "
            f"continued; start a new run (its results stay readable by cl-bench-report)"
        )
    raise NotResumable(f"resume={given}: not a cl_bench run folder (no {STATE_DIR}/{CONFIG_FILE} there); give the "
                       f"folder of the run to continue")


def foreign_entries(folder: Path) -> list[str]:
    """The names in `folder` that neither a cl_bench run nor a Hydra start put there: none for a folder
    that does not exist, is empty, or is a run folder (it holds `.cl_bench/`); else every name but
    Hydra's record and log files, sorted."""
    if not folder.is_dir() or state_dir(folder).is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.name != HYDRA_RECORD and not (entry.suffix == LOG_SUFFIX and entry.is_file()))


def links_in(folder: Path) -> list[Path]:
    """Symbolic links among the files a run writes in `folder` (its own entries and those of its record
    folders): a write there would go through the link to a file elsewhere. cl_bench never makes one."""
    found: set[Path] = set()
    for place in (folder, *(folder / name for name in (STATE_DIR, HYDRA_RECORD, CHECKPOINTS_DIR))):
        if place != folder and place.is_symlink():
            found.add(place)
        elif place.is_dir():
            found.update(entry for entry in place.iterdir() if entry.is_symlink())
    return sorted(found)


def check_folder_to_write(folder: Path, key: str | None = None) -> None:
    """ForeignFolder unless `folder` (the value of `key`, e.g. hydra.run.dir) is new, empty or a cl_bench
    run's, and holds no symbolic link where a run writes."""
    named = f"{key}={folder}" if key else str(folder)
    foreign = foreign_entries(folder)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ForeignFolder(
            f"{named} holds files that no cl_bench run made ({listed}): nothing was written there; give a new "
            f"or empty folder"
        )
    links = links_in(folder)
    if links:
        raise ForeignFolder(
            f"{named}: {links[0].relative_to(folder)} is a symbolic link, which a run would write through (cl_bench "
            f"never makes one): nothing was written there; remove the link, or copy the folder without links"
        )


def run_identity(config: DictConfig | dict) -> dict[str, Any]:
    """What a run folder is bound to: the experiment's identity and the seed."""
    seed = config.get("seed")
    return {**experiment_identity(config), "seed": seed}


def mismatch(saved: DictConfig, config: DictConfig) -> list[str]:
    """The dotted keys on which `config` would compute something other than `saved`."""
    return differing_keys(run_identity(saved), run_identity(config))


def shown(value: Any) -> str:
    """A config value in a message: a node by its target's class name, anything else compactly."""
    if isinstance(value, dict) and "_target_" in value:
        return str(value["_target_"]).rsplit(".", 1)[-1]
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def summarised(keys: list[str]) -> list[str]:
    """`keys` with the keys under a node whose `_target_` differs folded into the node."""
    nodes = [key.removesuffix("._target_") for key in keys if key.endswith("._target_")]
    return [key for key in keys if not any(key.startswith(f"{node}.") for node in nodes)] + nodes


def differences(saved: DictConfig, config: DictConfig) -> str:
    """Where `config` would compute something other than `saved` (mismatch), as up to four `key=value (the run
    has value)`; "" where nowhere."""
    old, new = run_identity(saved), run_identity(config)
    keys = sorted(summarised(mismatch(saved, config)))
    listed = ", ".join(f"{key}={shown(at(new, key, 'unset'))} (the run has {shown(at(old, key, 'unset'))})"
                       for key in keys[:4])
    return listed + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def check_claim(run_dir: Path, config: DictConfig) -> None:
    """Raise ConfigMismatch if `run_dir` holds a run of another experiment or seed than `config`, after
    putting back the `.hydra/` files Hydra overwrote for this refused start."""
    found = load_saved_config(run_dir)
    listed = differences(found.config, config) if found is not None else ""
    if listed:
        restore_hydra_files(run_dir)
        raise ConfigMismatch(
            f"{run_dir} holds a run of another config: {listed}. Use a new folder (hydra.run.dir=... or "
            f"hydra.sweep.dir=...), or continue that run as it was: cl-bench resume={run_dir}"
        )


def bind(run_dir: Path, config: DictConfig) -> None:
    """At a run's first start (once its config is known to be valid), save the config and Hydra's
    files of this start; a folder already bound keeps what it has."""
    if saved_config_path(run_dir).exists():
        return
    for name in HYDRA_FILES:
        if (run_dir / HYDRA_RECORD / name).is_file():
            copy_file(run_dir / HYDRA_RECORD / name, state_dir(run_dir) / name)
    write_text(OmegaConf.to_yaml(config), saved_config_path(run_dir))


def restore_hydra_files(run_dir: Path) -> None:
    """Put the run's own config and Hydra files back into `.hydra/`, if Hydra rewrote it."""
    hydra_dir = run_dir / HYDRA_RECORD
    if not hydra_dir.is_dir() or hydra_dir.is_symlink():
        return
    copy_file(saved_config_path(run_dir), hydra_dir / CONFIG_FILE)
    for name in HYDRA_FILES:
        if (state_dir(run_dir) / name).is_file():
            copy_file(state_dir(run_dir) / name, hydra_dir / name)


def is_running(run_dir: Path) -> bool | None:
    """Whether a process holds the run folder's lock now; None for a folder without one (made by an
    earlier cl_bench) or where the lock cannot be tried (a read-only copy)."""
    if not state_dir(run_dir).is_dir():
        return None
    try:
        with FileLock(state_dir(run_dir) / "lock", blocking=False):
            return False
    except Timeout:
        return True
    except OSError:
        return None


class RunLock:
    """Held for a whole run: a second process in the same folder is refused, naming the holder's PID.
    The OS releases it when the process dies (SIGKILL included)."""

    def __init__(self, run_dir: Path):
        self.folder = state_dir(run_dir)
        self.owner = self.folder / "lock.owner"
        self.lock = FileLock(self.folder / "lock", blocking=False)

    def __enter__(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            holder = read_data(self.owner, 100).decode(errors="replace").strip() if self.owner.is_file() else "unknown"
            raise FolderInUse(
                f"{self.folder.parent} is in use by another cl-bench process (PID {holder}); wait for it to end, "
                f"or stop it (kill {holder}) and resume"
            ) from None
        self.owner.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner.unlink(missing_ok=True)
        self.lock.release()
