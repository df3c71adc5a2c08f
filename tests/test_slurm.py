"""The SLURM path (`hydra/launcher=slurm`) against a real one-node SLURM cluster, started for the session.

The cluster is Debian's slurm-wlm and munge: munged, slurmctld and slurmd with a minimal slurm.conf in a
temporary folder (its own ports, state and logs; no accounting, as on many clusters), the node being
this machine with the CPUs `slurmd -C` finds. Where they are not installed the tests are skipped, saying
so; on CI (CI=true, as root) the fixture installs them, and a cluster that does not start fails the tests.

Jobs are tiny runs on the embedded digits, one CPU and one thread each. SlowFirstRun (a logger that
sleeps at every metrics row the first time a job runs) keeps a job running long enough to be timed out,
cancelled or interrupted, without changing what it computes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cl_bench.cli.slurm_job import CANCELLED, PREEMPTED, REQUEUED, stop_reason
from cl_bench.loggers.base import RunLogger

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("munged", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch", "srun", "scancel", "scontrol")
TINY = ["first_task.steps=30", "steps=30", "eval_every=10", "threads=1"]
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
SLOW = ["logger._target_=tests.test_slurm.SlowFirstRun"]  # with +logger.seconds=S


class SlowFirstRun(RunLogger):
    """Sleeps `seconds` at every metrics row while the SLURM job runs for the first time (not after a
    requeue): a long first run, a fast continuation, the same numbers."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def log_row(self, row: dict, index: int) -> None:
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
            time.sleep(self.seconds)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def install_slurm() -> str | None:
    """On CI (CI=true, root, apt-get): Debian's slurm-wlm and munge. Why SLURM is not there, or None."""
    if not missing_tools():
        return None
    if os.environ.get("CI") != "true" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"no SLURM here ({', '.join(missing_tools())} not found): `apt-get install slurm-wlm munge` "
                f"to run these tests (CI, as root, installs them itself)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr[-1000:]}"
    return f"{', '.join(missing_tools())} still missing after apt-get install" if missing_tools() else None


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class OneNodeSlurm:
    """munged + slurmctld + slurmd of a one-node cluster whose files all lie in `folder`; `env` reaches it
    (SLURM_CONF), and jobs submitted with it inherit it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr}{self.logs()}")
        return done

    def logs(self) -> str:
        return "".join(f"\n--- {log.name}\n" + log.read_text()[-2000:] for log in sorted(self.folder.glob("*.log")))

    def start(self) -> None:
        f = self.folder
        f.chmod(0o700)
        (f / "state").mkdir()
        (f / "spool").mkdir()
        key = f / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.run("munged", "--force", f"--key-file={key}", f"--socket={f / 'munge.socket'}",
                 f"--pid-file={f / 'munged.pid'}", f"--log-file={f / 'munged.log'}", f"--seed-file={f / 'munged.seed'}")
        node = self.run("slurmd", "-C").stdout.splitlines()[0]  # NodeName=<host> CPUs=... RealMemory=...
        host = re.match(r"NodeName=(\S+)", node)[1]
        ctld_port, d_port = free_ports(2)
        self.conf.write_text(f"""\
ClusterName=clbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it starts again (default 120 s; here longer than
# cl-bench's slowest squeue poll, 15 s, so that it sees the requeue)
AuthInfo=socket={f / 'munge.socket'},cred_expire=20
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
ReturnToService=2
InactiveLimit=0
KillWait=15
# A job of the partition `urgent` pre-empts those of `debug`, which SLURM requeues.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=15
PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
""")
        self.run("slurmctld")
        self.run("slurmd")
        deadline = time.monotonic() + 60
        while self.run("sinfo", "--noheader", "--format=%t", check=False).stdout.strip() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SLURM node did not become idle in 60 s{self.logs()}")
            time.sleep(0.5)

    def stop(self) -> None:
        jobs = self.run("squeue", "--noheader", "--format=%i", check=False).stdout.split()
        if jobs:
            self.run("scancel", *jobs, check=False)
        self.run("scontrol", "shutdown", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.folder / f"{name}.pid"
            deadline = time.monotonic() + 20
            try:
                pid = int(pid_file.read_text().split()[0])
                while time.monotonic() < deadline:
                    os.kill(pid, signal.SIGTERM if name == "munged" else 0)
                    time.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue  # gone (or never started)

    def states(self, job: str) -> dict[str, str]:
        """{job id: state} of a job (an array's every task) as squeue lists it, ended ones too."""
        done = self.run("squeue", "--noheader", "--array", "--states=all", f"--jobs={job}", "--format=%i %T")
        return dict(line.split() for line in done.stdout.splitlines())


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster for the session (skipped where SLURM is not installed; on CI it is)."""
    why_not = install_slurm()
    if why_not is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why_not)
        pytest.skip(why_not)
    cluster = OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Submitter:
    """`cl-bench -m ...` submitting to the cluster, its output read as it comes."""

    def __init__(self, cluster: OneNodeSlurm, tmp_path: Path, *args: str):
        self.sweep = tmp_path / "sweep"
        command = [sys.executable, "-m", "cl_bench.cli.app", "-m", f"output_root={tmp_path / 'out'}",
                   f"hydra.sweep.dir={self.sweep}", *TINY, *ON_SLURM, *args]
        self.process = subprocess.Popen(command, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.out):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None and not any(r.is_alive() for r in self.readers):
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.out + self.err))

    def wait(self, timeout: float = 240) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return code

    @property
    def text(self) -> str:
        return "\n".join(self.out + ["--- stderr"] + self.err)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def own_lines(lines: list[str]) -> list[str]:
    """The lines a sweep prints besides its report (the table, the jobs without a result, the note)."""
    report = re.compile(r"\||Results table \(|Mean ± |Jobs without a result")
    return [line for line in lines if line.strip() and not report.match(line)]


def wait_for_rows(folder: Path, rows: int, timeout: float = 60) -> None:
    """Until the run in `folder` has logged `rows` metrics rows: it is training, its signal handler set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = folder / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"{folder}: fewer than {rows} metrics rows after {timeout} s")


def test_a_sweep_runs_each_job_as_a_slurm_job_quietly_and_reports_the_failed_one(slurm, tmp_path):
    sweep = Submitter(slurm, tmp_path, "lr=0.001,-1")
    assert sweep.wait() == 1, sweep.text
    array = sweep.wait_for(r"submitted to SLURM as (\d+) ")[1]
    assert slurm.states(array) == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}  # both ran on SLURM
    for job in (0, 1):
        assert (sweep.sweep / ".submitit" / f"{array}_{job}" / f"{array}_{job}_0_result.pkl").exists()
    assert summary(sweep.sweep / "0")["status"] == "ok" and summary(sweep.sweep / "1")["status"] == "failed"
    report = (sweep.sweep / "report.md").read_text()
    assert "| Baseline |" in report and "| Baseline (lr=-1) | **failed** |" in report

    # Quiet: besides the report, one line for the submission, one per job when it starts and when it ends,
    # and the exit message; nothing of sacct (this cluster keeps no accounting) nor of submitit.
    printed = own_lines(sweep.out + sweep.err)
    assert len(printed) == 6, sweep.text
    assert re.fullmatch(r"cl-bench: 2 jobs submitted to SLURM as \d+ \(partition debug\); .*squeue.*", printed[0])
    start = re.compile(r"cl-bench: #[01] started \(SLURM job \d+_[01]( on \S+)?\): ")
    started = [line for line in printed if start.match(line)]
    assert len(started) == 2, sweep.text
    assert any(re.fullmatch(rf"cl-bench: Baseline: Score \d+\.\d% \(test \d+\.\d%\) · {sweep.sweep}/0", line)
               for line in sweep.out), sweep.text
    assert any(line.startswith("cl-bench: run failed: ConfigError: lr=-1") for line in sweep.err), sweep.text
    assert sweep.err[-1] == "cl-bench: 1 of 2 jobs did not end ok (1 failed); see the report"
    assert not re.search(r"sacct|accounting|Bypassing|submitit[: ]|WARNING|Traceback", sweep.text), sweep.text


def test_a_job_past_its_time_limit_is_requeued_and_ends_as_an_uninterrupted_run(slurm, tmp_path):
    from tests.helpers.runs import COMPARED, tiny_run

    # ~240 metrics rows, 0.25 s each the first time: SLURM's USR2 ahead of the 1-minute limit comes first
    # (10 s before it, give or take SLURM's 30-s checks); after the requeue the run ends in seconds.
    run = ["first_task.steps=600", "steps=600", "eval_every=5", "checkpoint.every=20"]
    sweep = Submitter(slurm, tmp_path, *run, *SLOW, "+logger.seconds=0.25", "hydra.launcher.timeout_min=1",
                      "hydra.launcher.signal_delay_s=10")
    reference, _ = tiny_run(tmp_path, *run, name="reference")  # the same run, uninterrupted, meanwhile here
    assert sweep.wait() == 0, sweep.text
    sweep.wait_for(r"#0 requeued by SLURM")
    sweep.wait_for(r"#0 started again")
    resumed = summary(sweep.sweep / "0")
    assert resumed["status"] == "ok" and resumed.get("resumed_from"), resumed
    assert {key: resumed[key] for key in COMPARED} == {key: reference[key] for key in COMPARED}
    assert (sweep.sweep / "0" / "metrics.jsonl").read_text() == (tmp_path / "reference" / "metrics.jsonl").read_text()
    log = next((sweep.sweep / ".submitit").glob("*/*_0_log.out")).read_text()
    assert "Requeued job" in log and "figure helper failed" not in log


def test_scancel_of_a_running_job_leaves_it_cancelled_and_the_sweep_reports_it(slurm, tmp_path):
    sweep = Submitter(slurm, tmp_path, *SLOW, "+logger.seconds=0.3")
    job = sweep.wait_for(r"#0 started \(SLURM job (\d+) on ")[1]
    wait_for_rows(sweep.sweep / "0", 2)
    slurm.run("scancel", job)
    assert sweep.wait() == 1, sweep.text
    ended = summary(sweep.sweep / "0")
    assert ended["status"] == "cancelled", ended
    assert f"SLURM job {job} was cancelled" in ended["error"] and "cl-bench resume=" in ended["error"]
    assert list((sweep.sweep / "0" / "checkpoints").iterdir())  # checkpointed: it can be continued
    fields = slurm.run("scontrol", "--oneliner", "show", "job", job).stdout
    assert "JobState=CANCELLED" in fields and "Restarts=0" in fields  # cancelled, not requeued
    assert "1 of 1 jobs did not end ok (1 cancelled)" in sweep.err[-1], sweep.text
    assert "| cancelled |" in (sweep.sweep / "report.md").read_text()
    log = (sweep.sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert "figure helper failed" not in log


def test_a_pre_empted_job_is_requeued_by_slurm_and_continues_from_its_checkpoint(slurm, tmp_path):
    sweep = Submitter(slurm, tmp_path, "first_task.steps=200", "steps=200", "checkpoint.every=20", *SLOW,
                      "+logger.seconds=0.3")
    job = sweep.wait_for(r"#0 started \(SLURM job (\d+) on ")[1]
    wait_for_rows(sweep.sweep / "0", 4)
    cpus = slurm.run("sinfo", "--noheader", "--format=%c").stdout.strip()
    slurm.run("sbatch", "--partition=urgent", f"--cpus-per-task={cpus}", "--output=/dev/null", "--wrap=sleep 1")
    assert sweep.wait() == 0, sweep.text
    sweep.wait_for(r"#0 requeued by SLURM")
    sweep.wait_for(r"#0 started again")
    ended = summary(sweep.sweep / "0")
    assert ended["status"] == "ok" and ended.get("resumed_from"), ended
    assert "Restarts=1" in slurm.run("scontrol", "--oneliner", "show", "job", job).stdout
    log = (sweep.sweep / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert f"cl-bench: SLURM job {job} was pre-empted: the run stopped at a checkpoint" in log


def test_what_slurm_says_tells_cancellation_from_pre_emption_requeue_and_time_limit():
    """The fields `scontrol show job` gave while a job's processes handled SLURM's SIGTERM (slurm_job's table)."""
    ending = {"JobState": "COMPLETING", "Reason": "None", "Restarts": "0"}
    assert stop_reason(ending, 0) == CANCELLED
    assert stop_reason({**ending, "PreemptTime": "None"}, 0) == CANCELLED  # a cluster that can pre-empt
    assert stop_reason({**ending, "JobState": "CANCELLED"}, 0) == CANCELLED
    assert stop_reason({**ending, "Restarts": "2"}, 1) == REQUEUED  # scontrol requeue
    assert stop_reason({**ending, "Restarts": "1"}, 1) == CANCELLED  # a job requeued before, now cancelled
    assert stop_reason({"JobState": "RUNNING", "Reason": "None", "PreemptTime": "2026-12-02T06:43:49"}, 0) == PREEMPTED
    assert stop_reason({**ending, "Reason": "TimeLimit"}, 0) is None  # submitit's: it requeued on the USR2
    assert stop_reason({"JobState": "RUNNING", "Reason": "None", "PreemptTime": "None"}, 0) is None  # a signal only
    assert stop_reason({}, 0) is None  # scontrol did not answer


def test_ctrl_c_on_the_submitting_command_cancels_the_sweeps_jobs(slurm, tmp_path):
    sweep = Submitter(slurm, tmp_path, "lr=0.001,0.0001", *SLOW, "+logger.seconds=0.3",
                      "hydra.launcher.array_parallelism=1")  # #1 waits for #0
    array = sweep.wait_for(r"#0 started \(SLURM job (\d+)_0 on ")[1]
    wait_for_rows(sweep.sweep / "0", 2)
    sweep.process.send_signal(signal.SIGINT)
    assert sweep.wait() == 1, sweep.text
    assert any("Ctrl-C: cancelling the sweep's SLURM jobs" in line for line in sweep.err), sweep.text
    assert set(slurm.states(array).values()) == {"CANCELLED"}
    assert summary(sweep.sweep / "0")["status"] == "cancelled"
    assert summary(sweep.sweep / "1")["status"] == "not_run"
    assert re.search(r"2 of 2 jobs did not end ok \((1 cancelled, 1 not run|1 not run, 1 cancelled)\)", sweep.err[-1])
    assert "Traceback" not in sweep.text
