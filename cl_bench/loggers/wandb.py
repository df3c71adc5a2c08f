"""Weights & Biases logger: each run (each job of a multirun) its own W&B run, its files in the run folder.

Never prompts and never hangs without network: online mode needs credentials (looked up as wandb does,
without writing the user's W&B settings or netrc) and a reachable server (checked with a short
connection attempt, and init time bounded); otherwise the run is logged offline, with a warning that
says why, for a later `wandb sync`.

A run stopped and resumed (`resume=<run folder>`, or started again in its folder) stays one W&B run:
its id is saved at the first start in `<run folder>/.cl_bench/wandb_id` and every later start
continues it (`resume="allow"`). A metrics row's W&B step is its index in metrics.jsonl, so the steps
only grow, and each row is logged once:

- online, W&B says which rows it has (`run.step` of the continued run: its last step + 1); the rows
  a resume computes again below that are skipped, and rows it lacks (lost when a process was killed
  before they were sent) are sent first, read back from metrics.jsonl;
- offline, wandb ignores `resume` and cannot tell: every start writes a new `offline-run-<time>-<id>`
  folder under the same id, and a resumed start logs only the rows after those metrics.jsonl held when
  it started (the earlier starts logged them). `wandb sync <run folder>/wandb/offline-run-*` uploads
  the parts one after another, in order of start, into the one W&B run. A process killed at once
  (SIGKILL) loses the rows wandb had not yet written to its offline file (it writes every 15 s);
  metrics.jsonl keeps them. Offline parts are to be synced before the run is resumed online: the
  online part would send their rows too (W&B lacks them), and a later sync add them a second time.

The first W&B start in a folder that already holds rows (`logger=wandb` given at `resume=`) logs
those rows first, from metrics.jsonl. The curve figure takes the step after the last row when the run
ends "ok"; a run that ends otherwise (and may be resumed) keeps it in its summary only, so that no
step a later row needs is taken.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import socket
from pathlib import Path
from urllib.parse import urlsplit

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from wandb.sdk.lib import runid, wbauth

from cl_bench.core.files import read_data, write_text
from cl_bench.core.layout import CURVES_FIGURE, METRICS_FILE
from cl_bench.loggers.base import RunLogger
from cl_bench.records.run_folder import state_dir

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
RUN_ID_FILE = "wandb_id"  # in <run folder>/.cl_bench/: the W&B run id, kept over resumes


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a multirun's jobs: its sweep folder, as `<date>_<time>`."""
    path = Path(sweep_dir)
    return f"{path.parent.name}_{path.name}"


def saved_run_id(run_dir: Path) -> tuple[str, bool]:
    """The W&B run id of the run in `run_dir`, and whether an earlier start saved it (else it is new,
    and saved now)."""
    path = state_dir(run_dir) / RUN_ID_FILE
    if path.exists():
        return read_data(path, 100).decode(errors="replace").strip(), True
    run_id = runid.generate_id()
    write_text(f"{run_id}\n", path)
    return run_id, False


def _server_reachable(base_url: str, timeout: float) -> bool:
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _warn_offline(reason: object, run_dir: Path) -> None:
    log.warning("W&B: %s; logging offline (upload later: wandb sync %s/wandb/offline-run-*)", reason, run_dir)


def _has_credentials(settings: wandb.Settings) -> bool:
    """Whether wandb finds credentials for the configured server (WANDB_API_KEY, an identity token file,
    the netrc entry, the settings' api_key), by its own lookup, which reads and writes nothing
    (unlike `wandb.login`, which saves the host in the user's W&B settings)."""
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    found = wbauth.authenticate_session(host=host, source="cl-bench", prompt=False, update_session=False)
    return found is not None


def _offline_reason(init_timeout: float) -> str | None:
    """Why an online run cannot start (no or malformed credentials, server unreachable), or None."""
    settings = wandb.setup().settings
    try:
        if not _has_credentials(settings):
            return "no W&B credentials (run `wandb login` or set WANDB_API_KEY)"
    except wandb.errors.AuthenticationError as error:
        return f"W&B credentials unusable: {error}"
    if not _server_reachable(settings.base_url, min(init_timeout, CONNECT_TIMEOUT_S)):
        return f"W&B server {settings.base_url} unreachable"
    return None


def _failure_reason(error: BaseException, timeout: float) -> str:
    """Why an online start failed, never empty: an error without a message (a server that accepts the
    connection but does not answer) is told as what was attempted and the error's type."""
    message = str(error).strip()
    base_url = wandb.setup().settings.base_url
    return message or f"W&B server {base_url} did not answer within {timeout:g} s ({type(error).__name__})"


def _count_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open() as file:
        return sum(1 for _ in file)


def _read_rows(path: Path, start: int, stop: int) -> list[dict]:
    """Rows `start` to `stop - 1` of a metrics file, as they were logged (NaN is written as null)."""
    with path.open() as file:
        lines = itertools.islice(file, start, stop)
        return [{k: (math.nan if v is None else v) for k, v in json.loads(line).items()} for line in lines]


def _first_missing_row(run: wandb.Run, continued: bool, metrics_path: Path) -> int:
    """The index of the first metrics row the W&B run lacks. Online: W&B's own count (its next step).
    Offline, where wandb cannot tell: none at a first start; at a later one, the rows metrics.jsonl held
    when it started (the earlier starts logged them)."""
    if not run.offline:
        return run.step
    return _count_rows(metrics_path) if continued else 0


class WandbLogger(RunLogger):
    """Logs config, evaluation rows, summary and curve figure of a run to W&B."""

    def __init__(
        self,
        mode: str = "online",
        project: str = "cl_bench",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str = "train",
        name: str | None = None,
        notes: str | None = None,
        init_timeout: float = 30.0,
        console: bool = False,
    ) -> None:
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode={mode}: must be online, offline or disabled")
        self.mode = mode
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = list(tags or [])
        self.job_type = job_type
        self.name = name
        self.notes = notes
        self.init_timeout = init_timeout
        self.console = console
        self.run: wandb.Run | None = None
        self.metrics_path: Path | None = None
        self.next_row = 0  # the metrics row the W&B run gets next (its W&B step)

    def open_run(
        self, run_dir: Path, job_type: str, name: str | None, group: str | None, config: dict, run_id: str | None = None
    ) -> wandb.Run:
        """Start a W&B run with files under `run_dir` (with `run_id`: that run, continued if W&B has it),
        offline (with a warning) when online cannot work."""
        mode = self.mode
        reason = _offline_reason(self.init_timeout) if mode == "online" else None
        if reason:
            _warn_offline(reason, run_dir)
            mode = "offline"
        options = {
            "project": self.project,
            "entity": self.entity,
            "group": self.group or group,
            "tags": self.tags,
            "job_type": job_type,
            "name": name,
            "notes": self.notes,
            "config": config,
            "dir": str(run_dir),
            "reinit": "finish_previous",
            "id": run_id,
            "resume": "allow" if run_id else None,
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return wandb.init(mode=mode, settings=self.settings(init_timeout=self.init_timeout), **options)
        except (wandb.errors.Error, TimeoutError) as error:
            if mode != "online":
                raise
            _warn_offline(_failure_reason(error, self.init_timeout), run_dir)
            return wandb.init(mode="offline", settings=self.settings(), **options)

    def settings(self, **more: object) -> wandb.Settings:
        """wandb's settings of a run: its own console lines (banner, history, summary, sync hints; wandb's
        `silent`) off unless `console`. cl_bench's own warnings (the offline fallback and its reason) show either
        way, in one line; wandb's own messages stay in the run's wandb/debug.log."""
        return wandb.Settings(silent=not self.console, quiet=not self.console, **more)

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        if self.mode == "disabled":
            return
        group, name = None, run_dir.name
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            name = hydra_cfg.job.override_dirname or name
            if hydra_cfg.mode == RunMode.MULTIRUN:
                group = sweep_group(hydra_cfg.sweep.dir)
        config = OmegaConf.to_container(cfg, resolve=True)
        config["run_dir"] = str(run_dir)
        run_id, continued = saved_run_id(run_dir)
        self.run = self.open_run(run_dir, self.job_type, self.name or name, group, config, run_id)
        self.metrics_path = run_dir / METRICS_FILE
        self.next_row = _first_missing_row(self.run, continued, self.metrics_path)
        self.run.define_metric("step")
        for pattern in ("val/*", "loss/*", "task", "task_step"):
            self.run.define_metric(pattern, step_metric="step")

    def _catch_up(self, stop: int) -> None:
        """Log the rows before `stop` that the W&B run lacks, from the metrics file."""
        if stop > self.next_row:
            for row in _read_rows(self.metrics_path, self.next_row, stop):
                self._log(row)

    def _log(self, row: dict) -> None:
        self.run.log(row, step=self.next_row, commit=True)
        self.next_row += 1

    def log_row(self, row: dict, index: int) -> None:
        if self.run is None or index < self.next_row:  # a row W&B has (computed again after a resume)
            return
        self._catch_up(index)
        self._log(row)

    def _log_figure(self, status: str | None, run_dir: Path) -> None:
        figure = wandb.Image(str(run_dir / CURVES_FIGURE))
        if status == "ok":  # no row follows: the step after the last
            self.run.log({"curves": figure}, step=self.next_row, commit=True)
        else:
            self.run.summary["curves"] = figure

    def finish(self, summary: dict, run_dir: Path) -> None:
        if self.run is None:
            return
        try:
            self._catch_up(_count_rows(self.metrics_path))  # rows W&B lacks that no row of this start brought
            self.run.summary.update(summary)
            if (run_dir / CURVES_FIGURE).exists():
                self._log_figure(summary.get("status"), run_dir)
        finally:
            run, self.run = self.run, None
            run.finish(exit_code=0 if summary.get("status") == "ok" else 1)
