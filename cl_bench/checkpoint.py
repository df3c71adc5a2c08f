"""Atomic, code-free checkpoint files: torch.save written to a temporary file then renamed, and
loaded with torch.load(weights_only=True), which refuses anything but tensors and plain values."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    _atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's state; raises if the file would need to run code to load."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a safe cl_bench checkpoint (loading it would run code or it is corrupt): {error}"
        ) from error


def write_json(data: Any, path: Path) -> None:
    """JSON written atomically (a crash never leaves a half-written file)."""
    _atomic_write(path, lambda file: file.write(json.dumps(data, indent=2, default=str).encode()))


def keep_last(folder: Path, pattern: str, count: int) -> None:
    """Delete all but the `count` newest files matching `pattern` in `folder`."""
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns)
    for old in files[: max(0, len(files) - count)]:
        old.unlink()
