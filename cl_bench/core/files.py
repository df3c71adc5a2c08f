"""Files written atomically: to a temporary name in the same folder, then renamed over the target, so that
a kill never leaves half a file, and a symlink at the target is replaced, never written through. Files read
back from a folder as data: regular files only, of a bounded size."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def _process_umask() -> int:
    """The umask, read once: from /proc on Linux (no change at all), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


FILE_MODE = 0o666 & ~_process_umask()  # what open() would give a new file (mkstemp gives 0600)


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into a temporary file beside `path`, then renamed to `path`; the temporary file is
    removed if the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, FILE_MODE)
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(data: Any, path: Path) -> None:
    """Strict JSON written atomically (a crash never leaves a half-written file)."""
    text = json.dumps(_json_safe(data), indent=2, default=str)
    write_atomically(path, lambda file: file.write(text.encode()))


def write_text(text: str, path: Path) -> None:
    """A text file written atomically."""
    write_atomically(path, lambda file: file.write(text.encode()))


def copy_file(source: Path, path: Path) -> None:
    """`source`'s bytes written atomically to `path` (which is replaced, never written through: a symlink
    there is replaced by the file, its target left as it was)."""
    data = read_data(source)
    write_atomically(path, lambda file: file.write(data))


class UnreadableFile(ValueError):
    """A file read back as data that is not a regular file, or larger than such a file can be."""


def read_data(path: Path, limit: int | None = None) -> bytes:
    """The bytes of `path`, a regular file (not a FIFO, a device or a folder, which could block or never end)
    of at most `limit` bytes (None: any size); UnreadableFile otherwise, OSError when it cannot be opened."""
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise UnreadableFile(f"{path}: not a regular file; not read")
        data = file.read() if limit is None else file.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise UnreadableFile(f"{path}: larger than {limit:,} bytes, more than cl_bench writes there; not read")
    return data
