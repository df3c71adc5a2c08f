"""Inside a SLURM job: why SLURM is stopping it, told from what SLURM reports about the job.

A run stopped by SIGTERM ends "interrupted" and continues from its checkpoint when started again.
On SLURM the same SIGTERM comes from `scancel` (the user is done with the job: it will not start
again), from pre-emption (the job is requeued) and from a time limit (submitit has requeued the job
on the USR2 before it). submitit only logs SIGTERM ("Bypassing signal SIGTERM"), so what SLURM's
controller says tells them apart (`scontrol show job`, tried on a one-node SLURM 22.05):

| stopped by            | JobState    | Reason    | PreemptTime | Restarts                 |
|-----------------------|-------------|-----------|-------------|--------------------------|
| scancel               | COMPLETING  | None      | not set     | as when the job started  |
| pre-emption           | RUNNING     | None      | set         |                          |
| time limit            | COMPLETING  | TimeLimit |             |                          |
| scontrol requeue      | COMPLETING  | None      |             | one more than at start   |
| scancel --signal=TERM | RUNNING     | None      | not set     |                          |

so a job is cancelled when its state is CANCELLED or COMPLETING, for no reason (not a time limit),
not pre-empted and not requeued since this process started (SLURM_RESTART_COUNT).
"""

from __future__ import annotations

import os
import re
import subprocess

ENDING = ("CANCELLED", "COMPLETING")


def slurm_job_id() -> str | None:
    """This process's SLURM job (an array task's own id), or None outside SLURM."""
    return os.environ.get("SLURM_JOB_ID") or None


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` of the job as {field: value}; {} when scontrol cannot say."""
    try:
        done = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(re.findall(r"(\S+?)=(\S*)", done.stdout)) if done.returncode == 0 else {}


def cancelled(fields: dict[str, str], restarts_at_start: int) -> bool:
    """Whether SLURM is ending the job because it was cancelled (see the module's table)."""
    return (
        fields.get("JobState") in ENDING
        and fields.get("Reason", "None") in ("None", "")
        and fields.get("PreemptTime", "None") in ("None", "")
        and int(fields.get("Restarts", "0") or 0) <= restarts_at_start
    )


def cancelled_job() -> str | None:
    """This process's SLURM job id when SLURM is ending the job because it was cancelled (scancel), else None
    (not in SLURM, pre-empted, timed out, requeued, or only signalled)."""
    job_id = slurm_job_id()
    if job_id is None:
        return None
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    shown = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return (shown or job_id) if cancelled(job_fields(job_id), restarts) else None
