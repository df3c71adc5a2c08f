"""Atomic, code-free checkpoint files: torch.save written to a temporary file then renamed, and
loaded with torch.load(weights_only=True), which refuses anything but tensors and plain values."""

from __future__ import annotations

import json
import math
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
    """A checkpoint's state; refuses a file that would need to run code to load."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a safe cl_bench checkpoint (loading it would run code, or it is corrupt): {error}"
        ) from error


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
    _atomic_write(path, lambda file: file.write(text.encode()))


class CheckpointDir:
    """A run's `checkpoints/` folder: files named by global step and next task, the last `keep` kept."""

    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    def save(self, state: dict[str, Any]) -> Path:
        path = self.folder / f"ckpt-{state['global_step']:09d}-{state['next_task']:03d}.pt"
        save_checkpoint(state, path)
        for old in sorted(self.folder.glob("ckpt-*.pt"))[: -self.keep]:
            old.unlink()
        return path

    def latest(self) -> Path | None:
        found = sorted(self.folder.glob("ckpt-*.pt"))
        return found[-1] if found else None
