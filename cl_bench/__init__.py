"""cl_bench: a Hydra-configured runner for sequential (continual) learning experiments."""

from importlib import metadata
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"

try:
    __version__ = metadata.version("cl_bench")
except metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"
