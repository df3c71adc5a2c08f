"""Hydra callbacks of `cl-bench`, kept free of heavy imports.

Hydra instantiates the callbacks of conf/config.yaml at the start of every run and multirun, so a
callback module that imported the report (pandas, matplotlib, torch) at the top would add about a
second to every single run. The report is imported here only when a multirun ends.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportCallback(Callback):
    """At the end of a multirun, writes and prints the Score table of its jobs (and logs it to W&B
    with `logger=wandb`): `cl_bench.report.ReportCallback`, imported only then."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from cl_bench.report import ReportCallback as Report

        Report().on_multirun_end(config, **kwargs)
