"""`hydra/launcher=slurm`: Hydra's submitit launcher for SLURM, quiet and watchful on the submitting side.

The jobs run exactly as with Hydra's launcher (pickled by submitit, one SLURM array per batch, logs in
`<sweep>/.submitit/<array id>/`, requeued at their time limit and continued from their last checkpoint).
What changes is the command that submitted them:

- It follows the jobs with squeue, one call per poll for the whole sweep, never with sacct: many
  clusters keep no SLURM accounting, and there submitit's sacct polls print a warning (three copies,
  through three handlers) plus sacct's own "Slurm accounting storage is disabled" at every poll.
  submitit's logger shows its warnings once, on stderr.
- It prints one line per job when SLURM starts it (job id, node, overrides), one when SLURM requeues
  it (time limit or pre-emption) and the job's own result line when it ends (its Score, or how it
  ended); then the sweep's table, as every sweep.
- A job that ends without a result (killed, out of memory, its node lost: no result file after SLURM
  forgot it) is named in one line and the sweep goes on; the report counts it.
- Ctrl-C cancels the sweep's jobs (scancel): a running job checkpoints and ends "cancelled", a job that
  had not started gets a summary saying "not_run", the report is written and the command exits
  non-zero. A second Ctrl-C stops waiting for the cancelled jobs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf, open_dict, read_write

from cl_bench.cli.plugins import SLURM_LAUNCHER
from cl_bench.core.files import read_data
from cl_bench.core.layout import FAILED_SCORE, SUMMARY_FILE
from cl_bench.core.not_run import record_not_run

POLL_S = 1.0  # result files are looked for every second (as submitit does)
SQUEUE_EVERY_S = (2.0, 15.0)  # squeue: every 2 s at first, slowing down to every 15 s while nothing changes
RESULT_GRACE_S = 30.0  # a job SLURM says has ended may take this long to show its result file (shared file systems)
RUNNING = "RUNNING"
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT")  # a job SLURM will (re)start
# squeue states of a job that will not run again (a requeued job is PENDING, REQUEUED or COMPLETING meanwhile).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "REVOKED"}
GONE = "GONE"  # no longer listed by squeue: ended (SLURM forgets a job MinJobAge after its end)


@dataclass
class Tracked:
    """One job of the sweep as the submitting command follows it."""

    num: int
    overrides: list[str]
    job: Any  # submitit's SlurmJob
    state: str = "PENDING"
    nodes: str = ""
    starts: int = 0
    requeued: bool = False  # requeued, and not seen running since
    ended_at: float | None = None  # when SLURM was first seen to say it has ended without a result file
    result: JobReturn | None = None

    @property
    def shown(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"


def say(line: str, ok: bool = True) -> None:
    print(line, file=sys.stdout if ok else sys.stderr, flush=True)


def quiet_submitit() -> None:
    """submitit's logger: warnings only, once, on stderr (it has a stdout and a stderr handler of its own,
    and Hydra's root handler repeats what it logs)."""
    logger = logging.getLogger("submitit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("submitit: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger.handlers, logger.propagate = [handler], False


def squeue_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, node list)} of the given jobs (array tasks one by one) as squeue lists them; a job
    squeue does not list is missing. None when squeue could not answer (the controller is busy or down)."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--jobs", ",".join(arrays),
                               "--format", "%i|%T|%N"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # every id unknown: SLURM has forgotten them all (anything else is a failure to answer)
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, state, nodes = (line.split("|") + ["", ""])[:3]
        states[job_id.strip()] = (state.strip(), nodes.strip())
    return states


def read_result(tracked: Tracked) -> JobReturn:
    """The job's JobReturn from its result file; a job that raised (in Hydra or submitit, before or after
    our task: cl-bench's own failures are results) gives a completed return of the worst Score."""
    from submitit.core.utils import pickle_load

    try:
        outcome, value = pickle_load(tracked.job.paths.result_pickle)
    except Exception as error:  # noqa: BLE001 (a truncated or unreadable file)
        outcome, value = "error", f"its result file cannot be read: {error}"
    if outcome == "success" and isinstance(value, JobReturn):
        return value
    last = str(value).strip().splitlines()[-1:] or ["unknown error"]
    say(f"cl-bench: #{tracked.num} SLURM job {tracked.job.job_id} failed: {last[0]} (log: {tracked.job.paths.stderr})",
        ok=False)
    return no_result(tracked)


def no_result(tracked: Tracked) -> JobReturn:
    """What a job without a usable result returns to the sweeper: the worst Score (its folder, if it has
    one, tells the report how it ended)."""
    return JobReturn(overrides=list(tracked.overrides), status=JobStatus.COMPLETED, _return_value=FAILED_SCORE)


def end_line(tracked: Tracked, ret: JobReturn) -> tuple[str, bool]:
    """The job's result line as the job printed it (in its log), from its summary; whether it ended ok."""
    from cl_bench.cli.app import result_line

    if ret.hydra_cfg is None:
        return "", False
    folder = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
    resumed = ret.cfg.get("resume") if ret.cfg is not None else None
    if resumed:
        folder = Path(str(resumed)).expanduser()
    try:
        summary = json.loads(read_data(folder / SUMMARY_FILE, 10_000_000))
    except (OSError, ValueError):  # e.g. a refused run (its folder is another run's): the job's own last line
        fallback = f"cl-bench: #{tracked.num} ended without a summary (log: {tracked.job.paths.stdout})"
        return last_line(tracked) or fallback, False
    return result_line(summary, folder), summary.get("status") == "ok"


def last_line(tracked: Tracked) -> str | None:
    """The last line the job printed as `cl-bench: ...` on its stderr (how it ended, when not ok)."""
    try:
        lines = tracked.job.paths.stderr.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line for line in reversed(lines) if line.startswith("cl-bench: ")), None)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Hydra's SlurmLauncher (same config, same jobs), following its jobs with squeue; see the module."""

    stopped = False  # Ctrl-C was pressed: later batches of the sweep are not submitted
    cancelling = False  # this batch's jobs were cancelled: one that never started has no result to wait for

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        quiet_submitit()
        if self.stopped:
            return [self.record_not_run(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        params = self.params
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"],
                                         slurm_max_num_timeout=params["max_num_timeout"])
        base = set(OmegaConf.structured(submitit_launcher.BaseQueueConf).keys())
        executor.update_parameters(**{key if key in base else f"{self._EXECUTOR}_{key}": value
                                      for key, value in params.items() if key not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params = [(list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                       Singleton.get_state()) for i, overrides in enumerate(job_overrides)]
        jobs = executor.map_array(self, *zip(*job_params))
        tracked = [Tracked(initial_job_idx + i, list(overrides), job)
                   for i, (overrides, job) in enumerate(zip(job_overrides, jobs))]
        where = f"partition {params['partition']}" if params.get("partition") else "the default partition"
        ids = sorted({job.job_id.split("_")[0] for job in jobs})
        logs = str(params["submitit_folder"]).replace("%j", "<job id>")
        count = f"{len(jobs)} jobs" if len(jobs) > 1 else "1 job"
        say(f"cl-bench: {count} submitted to SLURM as {', '.join(ids)} ({where}); their states come from squeue, "
            f"their logs go to {logs}")
        try:
            self.follow(tracked)
        except KeyboardInterrupt:
            self.cancel(tracked, ids)
        return [t.result if t.result is not None else no_result(t) for t in tracked]

    def follow(self, tracked: list[Tracked]) -> None:
        """Until every job has its result: a line when SLURM starts one, requeues one, and when one ends."""
        ids = [t.job.job_id for t in tracked]
        last_squeue, every, failing = float("-inf"), SQUEUE_EVERY_S[0], False
        while any(t.result is None for t in tracked):
            now = time.monotonic()
            changed = False
            for t in tracked:
                if t.result is None and t.job.paths.result_pickle.exists():
                    self.finish(t, read_result(t))
                    changed = True
            if now - last_squeue >= every:
                last_squeue = now
                states = squeue_states(ids)
                if states is None:
                    if not failing:
                        say("cl-bench: squeue does not answer; still waiting for the jobs (their result files "
                            "are checked every second)", ok=False)
                    failing = True
                else:
                    failing = False
                    changed |= self.update(tracked, states, now)
                every = SQUEUE_EVERY_S[0] if changed else min(SQUEUE_EVERY_S[1], every * 1.5)
            time.sleep(POLL_S)

    def update(self, tracked: list[Tracked], states: dict[str, tuple[str, str]], now: float) -> bool:
        """Take squeue's states in: start and requeue lines, jobs that ended without a result. Whether any
        job's state changed."""
        changed = False
        for t in tracked:
            if t.result is not None:
                continue
            state, nodes = states.get(t.job.job_id, (GONE, ""))
            t.nodes = nodes or t.nodes
            if state == RUNNING and t.state != RUNNING:
                self.started(t)
            elif t.starts and state in WAITING and t.state not in WAITING:
                t.requeued = True
                say(f"cl-bench: #{t.num} requeued by SLURM (time limit or pre-emption): it continues from its "
                    f"last checkpoint when it starts again")
            if state in ENDED or state == GONE:
                never_ran = self.cancelling and not t.starts
                if t.ended_at is None:
                    t.ended_at = now
                if never_ran or (now - t.ended_at > RESULT_GRACE_S and not t.job.paths.result_pickle.exists()):
                    if not never_ran:  # (one that never ran is recorded as not run)
                        say(f"cl-bench: #{t.num} SLURM job {t.job.job_id} ended ({state.lower()}) without a "
                            f"result: see {t.job.paths.stderr}", ok=False)
                    t.result = no_result(t)
            else:
                t.ended_at = None
            changed |= state != t.state
            t.state = state
        return changed

    @staticmethod
    def started(tracked: Tracked) -> None:
        tracked.starts += 1
        tracked.requeued = False
        again = " again" if tracked.starts > 1 else ""
        on = f" on {tracked.nodes}" if tracked.nodes else ""
        say(f"cl-bench: #{tracked.num} started{again} (SLURM job {tracked.job.job_id}{on}): {tracked.shown}")

    def finish(self, tracked: Tracked, ret: JobReturn) -> None:
        if (not tracked.starts or tracked.requeued) and ret.hydra_cfg is not None:  # it ran between two looks at squeue
            self.started(tracked)
        tracked.result = ret
        line, ok = end_line(tracked, ret)
        if line:
            say(line, ok)

    def cancel(self, tracked: list[Tracked], ids: list[str]) -> None:
        """Ctrl-C: scancel the sweep's jobs, wait for the running ones to checkpoint and end, record the
        ones that never started as not run. A second Ctrl-C stops waiting."""
        type(self).stopped = True
        self.cancelling = True
        say(f"cl-bench: Ctrl-C: cancelling the sweep's SLURM jobs (scancel {' '.join(ids)}); running jobs "
            f"checkpoint first (Ctrl-C again to stop waiting for them)", ok=False)
        subprocess.run(["scancel", *ids], check=False, timeout=60)
        try:
            self.follow(tracked)
        except KeyboardInterrupt:
            sys.exit(f"cl-bench: stopped waiting for the cancelled jobs; their report: cl-bench-report "
                     f"{self.config.hydra.sweep.dir}")
        for t in tracked:  # a job that made no folder never ran (one that did, and died, is in the report as killed)
            if t.result is not None and t.result.hydra_cfg is None:
                t.result = self.record_not_run(t.overrides, t.num, t)

    def record_not_run(self, overrides: list[str], num: int, tracked: Tracked | None = None) -> JobReturn:
        """A job of a stopped sweep that never ran: its folder with Hydra's files and a summary saying
        "not_run", as a local sweep leaves it (unless the job made its folder after all)."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
            config.hydra.job.id = tracked.job.job_id if tracked is not None else f"not_submitted_{num}"
        HydraConfig.instance().set_config(config)
        folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        hydra_dir = folder / str(config.hydra.output_subdir or ".hydra")
        if not (hydra_dir / "config.yaml").exists():
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = str(folder.absolute())
            task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
            hydra_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task, hydra_dir / "config.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": config.hydra}), hydra_dir / "hydra.yaml")
            OmegaConf.save(config.hydra.overrides.task, hydra_dir / "overrides.yaml")
            record_not_run(folder, "the sweep was stopped (Ctrl-C) before this SLURM job started")
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=FAILED_SCORE)


def use_for_slurm_multiruns() -> None:
    """Make `hydra/launcher=slurm` launch with this module's SlurmLauncher (the same class with a launch()
    that follows its jobs). Hydra makes plugins only of its `hydra_plugins` package, by class name, so the
    class that name stands for is replaced in Hydra's plugin registry before the launcher is made
    (callbacks start before the sweeper)."""
    Plugins.instance().class_name_to_class[SLURM_LAUNCHER] = SlurmLauncher
