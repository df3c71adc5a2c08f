"""The installed cl_bench's version (what runs record, and the report compares)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("cl_bench")
except metadata.PackageNotFoundError:  # a source tree that was not installed
    VERSION = "0+unknown"
