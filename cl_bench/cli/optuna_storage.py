"""Where an Optuna search keeps its study: a SQLite file whose folder exists before the study opens."""

from __future__ import annotations

from pathlib import Path


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of the SQLite file `path`, its parent folder created."""
    file = Path(path).expanduser().absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"
