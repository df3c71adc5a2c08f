"""How a job ends, as its summary.json says (and the report, for a job without a usable summary)."""

from __future__ import annotations

# The statuses of a job without a result, in the order a row without an ok job shows the first it has:
# failed, unreadable (its summary cannot be used), killed (no summary, no process), interrupted (a signal),
# cancelled (its SLURM job), not_run (a stopped sweep's), running (no summary, a process holds its lock).
NOT_OK = ("failed", "unreadable", "killed", "interrupted", "cancelled", "not_run", "running")
STATUSES = ("ok", *NOT_OK)
