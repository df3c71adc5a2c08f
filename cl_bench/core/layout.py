"""The names of the files and folders cl_bench writes: a run folder's, a sweep folder's, the report's.
Defined once here, imported wherever a file is written or read."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The configs: conf/ of the repository, installed inside the package.
CONFIG_PACKAGE = "cl_bench.conf"
CONFIG_DIR = Path(str(resources.files(CONFIG_PACKAGE)))

# A run folder.
STATE_DIR = ".cl_bench"  # the run's own records: its config, Hydra's files of its first start, lock, W&B id
CONFIG_FILE = "config.yaml"  # in STATE_DIR (the run's config) and in HYDRA_RECORD (Hydra's of the latest start)
HYDRA_FILES = ("hydra.yaml", "overrides.yaml")  # Hydra's other files, copied into STATE_DIR at the run's first start
HYDRA_RECORD = ".hydra"  # what Hydra writes into a job's folder at every start, before cl_bench's code runs
LOG_SUFFIX = ".log"  # Hydra's job log file (<run>/app.log)
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TASKS_FILE = "tasks.json"
ERROR_FILE = "error.txt"
CURVES_FIGURE = "curves.png"
CHECKPOINTS_DIR = "checkpoints"

# A sweep folder.
SWEEP_RECORD = "multirun.yaml"  # what Hydra writes into every sweep folder it makes

# The report's files (in a sweep folder, or cl-bench-report's --out).
REPORT_MARKDOWN = "report.md"
REPORT_CSV = "report.csv"
JOBS_CSV = "jobs.csv"
COMPARISON_FIGURE = "comparison.png"

# What a run that did not end ok returns to a sweeper that maximises the Score: the worst Score.
FAILED_SCORE = 0.0
