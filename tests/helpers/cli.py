"""The command line as a user runs it: `cl-bench ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.config import TINY


def cl_bench(tmp_path: Path, *args: str, multirun: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """`cl-bench [--multirun] +debug=tiny <args>`, outputs under tmp_path/out (any of `args` wins
    over the tiny preset); the finished process, its output captured as text, within `timeout` seconds."""
    flags = ["--multirun"] if multirun else []
    command = [sys.executable, "-m", "cl_bench.cli.app", *flags, f"output_root={tmp_path / 'out'}", TINY, *args]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)
