"""threads=auto: the cores a process may use (affinity, cgroup quota, SLURM), divided among joblib's jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from cl_bench.core.errors import ConfigError
from cl_bench.engine import threads
from cl_bench.engine.threads import cgroup_cores, parallel_jobs, resolve_threads, usable_cores
from tests.helpers.config import compose_config
from tests.helpers.runs import tiny_run


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def cores(monkeypatch):
    """Set the affinity mask's size."""

    def set_affinity(n: int) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(n)))

    return set_affinity


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_cores(tmp_path / "cgroup", tmp_path / "proc-cgroup") is None


def test_cgroup_v2_quota_in_the_process_own_cgroup(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    write(proc, "0::/user.slice/job7\n")
    write(root / "cpu.max", "max 100000\n")  # the root: no limit
    write(root / "user.slice/job7/cpu.max", "250000 100000\n")  # 2.5 cores: 2 whole ones
    assert cgroup_cores(root, proc) == 2


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    write(proc, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cores(root, proc) == 3
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cores(root, proc) is None


def test_a_quota_under_one_core_still_gives_one(tmp_path):
    write(tmp_path / "cpu.max", "50000 100000\n")
    assert cgroup_cores(tmp_path, tmp_path / "none") == 1


def test_the_lowest_limit_wins(tmp_path, cores):
    cores(8)
    write(tmp_path / "cpu.max", "400000 100000\n")
    none = tmp_path / "none"
    assert usable_cores({}, tmp_path / "absent", none) == (8, "affinity")
    assert usable_cores({}, tmp_path, none) == (4, "cgroup quota")
    assert usable_cores({"SLURM_CPUS_PER_TASK": "3"}, tmp_path, none) == (3, "SLURM_CPUS_PER_TASK")
    assert usable_cores({"SLURM_CPUS_PER_TASK": "16"}, tmp_path, none) == (4, "cgroup quota")
    assert usable_cores({"SLURM_CPUS_PER_TASK": "garbage"}, tmp_path, none) == (4, "cgroup quota")


@pytest.fixture
def hydra_config():
    """Make this process a job of a Hydra run: the real config with `launcher` overrides, in `mode`."""

    def set_hydra(launcher: list[str], mode: str = "MULTIRUN") -> None:
        cfg = compose_config(*launcher, hydra=True)
        cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)

    yield set_hydra
    HydraConfig.instance().cfg = None


JOBLIB = ["hydra/launcher=joblib"]


@pytest.mark.parametrize(
    "launcher, mode, expected",
    [
        ([*JOBLIB, "hydra.launcher.n_jobs=2"], "MULTIRUN", 2),
        (JOBLIB, "MULTIRUN", 4),  # the plugin's default n_jobs=-1: one per core, as joblib counts
        ([*JOBLIB, "hydra.launcher.n_jobs=-2"], "MULTIRUN", 3),
        ([*JOBLIB, "hydra.launcher.n_jobs=2"], "RUN", 1),  # a single run: the launcher runs nothing
        ([], "MULTIRUN", 1),  # the basic launcher: one job at a time
    ],
)
def test_jobs_at_once_follow_joblibs_n_jobs(hydra_config, launcher, mode, expected):
    hydra_config(launcher, mode)
    assert parallel_jobs(4) == expected


def test_outside_hydra_a_job_runs_alone():
    assert not HydraConfig.initialized()
    assert parallel_jobs(4) == 1


def test_auto_divides_the_cores_among_the_jobs(hydra_config, cores, monkeypatch):
    cores(2)
    monkeypatch.setattr(threads, "cgroup_cores", lambda *args: None)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert resolve_threads("auto") == (2, "auto: 2 cores (affinity)")
    hydra_config([*JOBLIB, "hydra.launcher.n_jobs=2"])
    assert resolve_threads("auto") == (1, "auto: 2 cores (affinity) / 2 joblib jobs")
    hydra_config([*JOBLIB, "hydra.launcher.n_jobs=5"])  # more jobs than cores: still one thread each
    assert resolve_threads("auto") == (1, "auto: 2 cores (affinity) / 5 joblib jobs")
    assert resolve_threads(3) == (3, "config")
    assert resolve_threads(None) == (None, "torch default (threads=null)")


def test_the_run_summary_says_which_threads_and_why(tmp_path, cores, monkeypatch):
    cores(1)
    summary, _ = tiny_run(tmp_path, "threads=auto", "steps=5", "first_task.steps=5", "eval_every=5")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["threads"] == 1 and summary["threads_source"].startswith("auto: 1 cores")
    summary, _ = tiny_run(tmp_path, "threads=1", "steps=5", "first_task.steps=5", "eval_every=5", name="set")
    assert (summary["threads"], summary["threads_source"]) == (1, "config")


@pytest.mark.parametrize("value", ["many", 0, -2, 1.5, True])
def test_bad_threads_are_refused(make_config, value):
    from cl_bench.engine.validate import validate_config

    with pytest.raises(ConfigError, match="use auto .* or a positive integer"):
        validate_config(make_config(f"threads={value}"))
