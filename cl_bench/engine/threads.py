"""How many torch threads a job takes. `threads=auto` (the default) gives it the cores this process may
use — the fewest of its CPU affinity, its cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`, whole
cores, rounded down) and `SLURM_CPUS_PER_TASK` under SLURM — divided among the jobs the launcher runs at
once (Hydra's joblib launcher: `hydra.launcher.n_jobs`), at least 1: two jobs never fight over the same
cores, which on small models costs far more than the threads gain (two 2-thread torch processes on 2 cores
ran ten times slower than one)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

AUTO = "auto"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def resolve_threads(setting: int | str | None) -> tuple[int | None, str]:
    """(the torch threads to set, None to keep torch's default; why, as the run's summary records it)."""
    if setting is None:
        return None, "torch default (threads=null)"
    if setting != AUTO:
        return int(setting), "config"
    cores, limit = usable_cores()
    jobs = parallel_jobs(cores)
    threads = max(1, cores // jobs)
    shared = f" / {jobs} joblib jobs" if jobs > 1 else ""
    return threads, f"auto: {cores} cores ({limit}){shared}"


def usable_cores(
    env: Mapping[str, str] = os.environ, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> tuple[int, str]:
    """(the cores this process may use, the limit that set it): the fewest of the affinity mask, the
    cgroup CPU quota and SLURM's CPUs per task."""
    limits = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}
    quota = cgroup_cores(cgroup_root, proc_cgroup)
    if quota is not None:
        limits["cgroup quota"] = quota
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    limit = min(limits, key=limits.__getitem__)
    return limits[limit], limit


def cgroup_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """Whole cores the cgroup CPU quota allows (at least 1), None without a quota; the process's own cgroup
    (from `proc_cgroup`) and the hierarchy's root (a container's view) are both read, the lower wins."""
    dirs: list[tuple[Path, str]] = [(root, "v2"), (root / "cpu", "v1"), (root / "cpu,cpuacct", "v1")]
    if proc_cgroup.is_file():
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            relative = path.lstrip("/")
            if controllers == "":
                dirs.append((root / relative, "v2"))
            elif "cpu" in controllers.split(","):
                dirs += [(root / mount / relative, "v1") for mount in ("cpu", "cpu,cpuacct", controllers)]
    quotas = [q for q in (_quota(directory, version) for directory, version in dirs) if q is not None]
    return max(1, int(min(quotas))) if quotas else None


def _quota(directory: Path, version: str) -> float | None:
    """Quota / period in cores, or None (no such file, or no limit)."""
    try:
        if version == "v2":
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota == "max" or int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def parallel_jobs(cores: int) -> int:
    """The jobs running at once beside this one: joblib's `n_jobs` (negative counts back from `cores`, as
    joblib does: -1 is one per core) when Hydra's joblib launcher runs this job of a multirun, else 1."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return 1
    hydra = HydraConfig.get()
    launcher = hydra.get("launcher") or {}
    if hydra.mode != RunMode.MULTIRUN or "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None:
        return 1
    return max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)
