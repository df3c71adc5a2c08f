"""The check of an image folder's files before training: each file's header verified (PIL's `verify`, which
also checks a PNG's CRCs) and the file decoded once by the loader's own decode routine, so that a file that
passes decodes in training. The outcome is recorded under `cache_dir`, keyed by the files (path, size, mtime),
the folder and the decode settings, so only the first run over a folder pays for the decoding; parallel jobs
wait on a file lock for the one that checks."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import PIL
import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cl_bench.data.decoded_cache import fingerprint

log = logging.getLogger(__name__)

CHECK_BATCH = 64  # files a DataLoader worker checks per batch


def header_error(path: str) -> str | None:
    """None when PIL identifies the file and `verify()` passes (header parse; full CRC check for
    PNG), else the error."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad files
        return f"{type(error).__name__}: {error}"
    return None


def file_error(path: str, decode: Callable[[str], object]) -> str | None:
    """`header_error`, else the error of decoding the file with `decode`, else None."""
    error = header_error(path)
    if error is not None:
        return error
    try:
        decode(path)
    except Exception as error:  # PIL's decode errors take many types (OSError, SyntaxError, ValueError...)
        return f"{type(error).__name__}: {error}"
    return None


class _Checking(Dataset):
    """The error of each path, "" when it decodes."""

    def __init__(self, paths: list[str], decode: Callable[[str], object]):
        self.paths, self.decode = paths, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return file_error(self.paths[i], self.decode) or ""


def file_errors(paths: list[str], decode: Callable[[str], object], workers: int) -> dict[str, str]:
    """The paths whose header check or decoding fails, with their errors, checked in `workers` DataLoader
    worker processes (0: in this one)."""
    # a private generator: checking leaves the global random stream (model init) as reading the record does
    loader = DataLoader(_Checking(paths, decode), batch_size=CHECK_BATCH, num_workers=workers, collate_fn=list,
                        generator=torch.Generator())
    errors: dict[str, str] = {}
    start = 0
    for batch in loader:
        errors.update({paths[start + i]: error for i, error in enumerate(batch) if error})
        start += len(batch)
    return errors


def unreadable_images(paths: list[str], root: Path, decode: Callable[[str], object], settings: tuple,
                      workers: int, cache_dir: str | None) -> dict[str, str]:
    """`file_errors` of `paths` (files under `root`; `settings`: what shapes `decode`), read from the record
    under `cache_dir` when a run checked the same files with the same settings, else checked and recorded
    there; without a `cache_dir`, checked on every call."""
    if not cache_dir:
        return _timed_check(paths, root, decode, workers)
    folder = Path(cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    key = fingerprint(paths, root, "checked", str(root.resolve()), PIL.__version__, *settings)
    record = folder / f"checked-{key}.json"
    relative = {os.path.relpath(path, root): path for path in paths}
    with FileLock(str(folder / f"checked-{key}.lock")):
        recorded = _read_record(record, relative) if record.exists() else None
        if recorded is not None:
            return recorded
        errors = _timed_check(paths, root, decode, workers)
        if not record.exists():
            _write_record(record, len(paths), {os.path.relpath(path, root): e for path, e in errors.items()})
    return errors


def _timed_check(paths: list[str], root: Path, decode: Callable[[str], object], workers: int) -> dict[str, str]:
    """`file_errors`, its duration logged: the first run over a large folder spends minutes here."""
    log.info("%s: checking %d images (each decoded once)", root, len(paths))
    started = time.perf_counter()
    errors = file_errors(paths, decode, workers)
    log.info("%s: %d images checked in %.1f s, %d unreadable", root, len(paths), time.perf_counter() - started,
             len(errors))
    return errors


def _read_record(record: Path, relative: dict[str, str]) -> dict[str, str] | None:
    """The unreadable files (path: error) that `record` lists, `relative` mapping its names to the paths; None
    (logged) when it is not a record of these files."""
    try:
        content = json.loads(record.read_text())
        if content["files"] != len(relative):
            raise ValueError(f"it counts {content['files']} files, the folder {len(relative)}")
        unreadable = {relative[name]: error for name, error in content["unreadable"].items()}
        if not all(isinstance(error, str) for error in unreadable.values()):
            raise TypeError("an error that is not text")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s is not a record of these files (%s: %s): checking them again; delete it to record anew",
                    record, type(error).__name__, error)
        return None
    return unreadable


def _write_record(record: Path, n_files: int, unreadable: dict[str, str]) -> None:
    """The record, written whole to a new file then renamed to `record` (absent: the caller holds the lock);
    a failed write is logged and costs only the next run a check."""
    handle, partial = tempfile.mkstemp(dir=record.parent, prefix=record.name, suffix=".partial")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump({"files": n_files, "unreadable": unreadable}, file)
        os.replace(partial, record)
    except OSError as error:
        log.warning("could not record the image check in %s: %s", record, error)
        Path(partial).unlink(missing_ok=True)
