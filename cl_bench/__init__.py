"""cl_bench: a Hydra-configured runner for sequential (continual) learning experiments."""

from cl_bench.core.version import VERSION as __version__  # noqa: F401 (the package's public version)
