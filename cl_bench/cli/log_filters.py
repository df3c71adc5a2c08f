"""Logging filters of `cl-bench`'s terminal output (conf/config.yaml `hydra.hydra_logging`)."""

from __future__ import annotations

import logging
import re

JOB_LIST_LINE = re.compile(r"\s*#\d+ : ")


class WithoutJobList(logging.Filter):
    """Drops the launchers' "#3 : lr=0.01 ..." lines: each job prints its own start line (its number,
    overrides and folder) when it starts (cl_bench.cli.app.start_line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not JOB_LIST_LINE.match(record.getMessage())
