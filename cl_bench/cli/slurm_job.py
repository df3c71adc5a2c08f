"""Inside a SLURM job: why SLURM is stopping it, told from what SLURM reports about the job.

A run stopped by SIGTERM checkpoints and ends "interrupted"; it continues from its checkpoint when
started again. On SLURM that SIGTERM comes from `scancel` (the user is done with the job: SLURM will not
start it again), from pre-emption or `scontrol requeue` (SLURM starts the job again), or from the time
limit (submitit requeues the job itself on the USR2 it gets ahead of the limit). submitit only logs a
SIGTERM ("Bypassing signal SIGTERM"), so what SLURM's controller says about the job tells them apart
(`scontrol show job`, as a one-node SLURM 22.05 showed it while the job's processes handled the signal):

| stopped by            | JobState    | Reason    | PreemptTime | Restarts                 |
|-----------------------|-------------|-----------|-------------|--------------------------|
| scancel               | COMPLETING  | None      | not set     | as when the job started  |
| pre-emption           | RUNNING     | None      | set         | as when the job started  |
| scontrol requeue      | COMPLETING  | None      | not set     | one more than at start   |
| time limit            | COMPLETING  | TimeLimit | not set     | as when the job started  |
| scancel --signal=TERM | RUNNING     | None      | not set     | as when the job started  |

(the job's own count at its start is SLURM_RESTART_COUNT.) A pre-empted job that ends by itself within
its grace time is not requeued by SLURM (only one it kills is): it requeues itself.
"""

from __future__ import annotations

import os
import re
import subprocess

CANCELLED, PREEMPTED, REQUEUED = "cancelled", "pre-empted", "requeued"


def slurm_job_id() -> str | None:
    """This process's SLURM job (an array task's own id), or None outside SLURM."""
    return os.environ.get("SLURM_JOB_ID") or None


def shown_job_id() -> str | None:
    """The job as squeue and the sweep's lines name it: `<array>_<task>` for an array task."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else slurm_job_id()


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` of the job as {field: value}; {} when scontrol cannot say."""
    try:
        done = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(re.findall(r"(\S+?)=(\S*)", done.stdout)) if done.returncode == 0 else {}


def stop_reason(fields: dict[str, str], restarts_at_start: int) -> str | None:
    """CANCELLED, PREEMPTED or REQUEUED from the job's fields (the module's table); None for a time limit,
    a signal alone, or fields that say nothing."""
    if not fields:
        return None
    if fields.get("PreemptTime", "None") not in ("None", ""):
        return PREEMPTED
    if int(fields.get("Restarts") or 0) > restarts_at_start:
        return REQUEUED
    if fields.get("JobState") in ("CANCELLED", "COMPLETING") and fields.get("Reason", "None") in ("None", ""):
        return CANCELLED
    return None


def requeue() -> bool:
    """Requeue this process's job (`scontrol requeue`, as submitit does at a time limit): a job that ends by
    itself during its pre-emption's grace time is not requeued by SLURM. Whether SLURM took it."""
    job_id = slurm_job_id()
    if job_id is None:
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def why_stopped() -> str | None:
    """Why SLURM is stopping this process's job (CANCELLED, PREEMPTED, REQUEUED), or None (not in SLURM,
    its time limit, or a signal that does not end the job)."""
    job_id = slurm_job_id()
    if job_id is None:
        return None
    return stop_reason(job_fields(job_id), int(os.environ.get("SLURM_RESTART_COUNT") or 0))
