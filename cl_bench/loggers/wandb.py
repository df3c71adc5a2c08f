"""Weights & Biases logger: each run (each job of a multirun) its own W&B run, its files in the run folder.

Never prompts and never hangs without network: online mode needs saved credentials and a reachable
server (checked with a short connection attempt, and init time bounded); otherwise the run is logged
offline, with a warning, for a later `wandb sync`.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cl_bench.loggers.base import RunLogger

log = logging.getLogger(__name__)

CURVES_FILE = "curves.png"
CONNECT_TIMEOUT_S = 5.0


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a multirun's jobs: its sweep folder, as `<date>_<time>`."""
    path = Path(sweep_dir)
    return f"{path.parent.name}_{path.name}"


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


def _offline_reason(init_timeout: float) -> str | None:
    """Why an online run cannot start (no credentials, server unreachable), or None."""
    base_url = wandb.setup().settings.base_url
    if not wandb.login(host=base_url, prompt=False, verify=False):
        return "no W&B credentials (run `wandb login` or set WANDB_API_KEY)"
    if not _server_reachable(base_url, min(init_timeout, CONNECT_TIMEOUT_S)):
        return f"W&B server {base_url} unreachable"
    return None


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
        self.run: wandb.Run | None = None

    def open_run(self, run_dir: Path, job_type: str, name: str | None, group: str | None, config: dict) -> wandb.Run:
        """Start a W&B run with files under `run_dir`, offline (with a warning) when online cannot work."""
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
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=self.init_timeout), **options)
        except wandb.errors.CommError as error:
            _warn_offline(error, run_dir)
            return wandb.init(mode="offline", **options)

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        group, name = None, run_dir.name
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            name = hydra_cfg.job.override_dirname or name
            if hydra_cfg.mode == RunMode.MULTIRUN:
                group = sweep_group(hydra_cfg.sweep.dir)
        config = OmegaConf.to_container(cfg, resolve=True)
        config["run_dir"] = str(run_dir)
        self.run = self.open_run(run_dir, self.job_type, self.name or name, group, config)
        self.run.define_metric("step")
        for pattern in ("val/*", "loss/*", "task", "task_step"):
            self.run.define_metric(pattern, step_metric="step")

    def log_row(self, row: dict) -> None:
        if self.run is not None:
            self.run.log(row)

    def finish(self, summary: dict, run_dir: Path) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.summary.update(summary)
            if (run_dir / CURVES_FILE).exists():
                run.log({"curves": wandb.Image(str(run_dir / CURVES_FILE))})
        finally:
            run.finish(exit_code=0 if summary.get("status") == "ok" else 1)
