"""cl_bench: a Hydra-configured runner for sequential (continual) learning experiments."""

from importlib import metadata, resources
from pathlib import Path

CONFIG_PACKAGE = "cl_bench.conf"  # conf/ of the repository, installed inside the package
CONFIG_DIR = Path(str(resources.files(CONFIG_PACKAGE)))

try:
    __version__ = metadata.version("cl_bench")
except metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"
