"""cl_bench: a Hydra-configured runner for sequential (continual) learning experiments."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
