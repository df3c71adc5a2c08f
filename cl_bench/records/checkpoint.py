"""Atomic, self-verifying, code-free checkpoint files: the torch.save payload followed by a trailer
holding its SHA-256 (written last), written to a temporary file then renamed; loaded only when the
checksum verifies, with torch.load(weights_only=True), which refuses anything but tensors and plain values."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import torch

from cl_bench.core.files import read_data, write_atomically
from cl_bench.core.state_format import STATE_FORMAT, IncompatibleState

log = logging.getLogger(__name__)

CHECKSUM_MAGIC = b"cl_bench-sha256:"  # the trailer: this, then the payload's SHA-256 digest
TRAILER_SIZE = len(CHECKSUM_MAGIC) + hashlib.sha256().digest_size


class CorruptState(ValueError):
    """A checkpoint or cache file whose bytes are not those cl_bench wrote (truncated or altered)."""


def remove_partial_writes(folder: Path, names: str) -> None:
    """Delete the temporary files of writes of `names` (a glob) cut off by a kill: `.<name>.<random>`."""
    for stray in folder.glob(f".{names}.*"):
        stray.unlink(missing_ok=True)


def write_checksummed(payload: bytes, path: Path) -> None:
    """`payload` then its checksum trailer, written atomically."""

    def write(file: BinaryIO) -> None:
        file.write(payload)
        file.write(CHECKSUM_MAGIC + hashlib.sha256(payload).digest())

    write_atomically(path, write)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """`state` as torch.save writes it, then its checksum; atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_checksummed(buffer.getvalue(), path)


def _read_payload(path: Path) -> tuple[bytes, bool]:
    """The file's payload and whether a checksum trailer verified it; CorruptState if it does not."""
    data = read_data(path)
    trailer = data[-TRAILER_SIZE:]
    if len(data) < TRAILER_SIZE or not trailer.startswith(CHECKSUM_MAGIC):
        return data, False
    payload = data[:-TRAILER_SIZE]
    if hashlib.sha256(payload).digest() != trailer[len(CHECKSUM_MAGIC) :]:
        raise CorruptState(f"{path}: hash mismatch (its bytes changed after cl_bench wrote them); not loaded")
    return payload, True


def _torch_load(path: Path, payload: bytes, device: torch.device | str | None) -> Any:
    """`payload` loaded with torch.load(weights_only=True): tensors and plain values only."""
    try:
        return torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a safe cl_bench checkpoint (loading it would run code, or it is corrupt): {error}"
        ) from error


def _refuse_unchecked(path: Path, data: bytes) -> NoReturn:
    """Why a file without a checksum is not loaded: cut off, or written by an earlier cl_bench."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CorruptState(f"{path}: truncated or damaged (no checksum at its end, and not a complete torch file); not loaded")
    state = _torch_load(path, data, "cpu")  # only to read its format; refuses code like any load
    written_by = state.get("format", "0.1 or older") if isinstance(state, dict) else "0.1 or older"
    if written_by == STATE_FORMAT:
        raise CorruptState(f"{path}: truncated (the checksum written at its end is missing); not loaded")
    raise IncompatibleState(
        f"{path} has no checksum: it was written by an earlier cl_bench (cl_bench {written_by}; checkpoints carry "
        f"one since {STATE_FORMAT}), whose state cl_bench {STATE_FORMAT} does not continue: start a new run folder "
        f"(hydra.run.dir=<a new folder>)"
    )


def load_checkpoint(path: Path, device: torch.device | str | None = "cpu") -> dict[str, Any]:
    """A checkpoint's state, once its checksum verifies, its tensors on `device` (None: each on the device it was
    saved from); refuses a file that would need to run code to load. Raises CorruptState (truncated, hash mismatch)
    or IncompatibleState (no checksum: an earlier cl_bench)."""
    payload, verified = _read_payload(path)
    if not verified:
        _refuse_unchecked(path, payload)
    return _torch_load(path, payload, device)


def load_weights_file(path: Path) -> dict[str, Any]:
    """`init_from`'s file: a cl_bench checkpoint (its checksum verified) or a plain torch state dict
    (no checksum to verify), loaded safely."""
    payload, _ = _read_payload(path)
    return _torch_load(path, payload, "cpu")


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

    def latest_verified(self, device: torch.device | str) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies, and its state; None in a new run. A bad one is renamed
        aside (`<name>.corrupt`, never picked again) with a warning, for the one before it; CorruptState
        when none verifies. First removes the temporary files of writes a kill cut off."""
        remove_partial_writes(self.folder, "ckpt-*.pt")
        for path in sorted(self.folder.glob("ckpt-*.pt"), reverse=True):
            try:
                return path, load_checkpoint(path, device)
            except CorruptState as error:
                aside = path.with_name(f"{path.name}.corrupt")
                os.replace(path, aside)
                log.warning("%s; renamed to %s, trying the checkpoint before it", error, aside.name)
        if any(self.folder.glob("ckpt-*.pt.corrupt")):
            raise CorruptState(
                f"no checkpoint in {self.folder} verifies (the bad ones are renamed *.corrupt): this run cannot be "
                f"continued; start a new run folder (hydra.run.dir=<a new folder>)"
            )
        return None
