"""The format of a run's saved state (checkpoints and task-A cache entries): a cl_bench reads only the states
written in the format it writes (CHANGELOG.md says what each format changed)."""

from __future__ import annotations

STATE_FORMAT = "0.3"


class IncompatibleState(ValueError):
    """A checkpoint written by a cl_bench whose settings meant something else."""
