"""cl_bench: a Hydra-configured runner for sequential (continual) learning experiments, a command (`cl-bench`,
`cl-bench-report`) and a library: `compose`, `run`, `load`, `runs`, `table`, `paper_table`, `sweep` and `Run`
(cl_bench/api.py, docs/python.md). They are imported when first used: `import cl_bench` costs its version only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cl_bench.core.version import VERSION as __version__

if TYPE_CHECKING:
    from cl_bench.api import Run, RunRefused, compose, load, paper_table, run, runs, sweep, table

__all__ = ["Run", "RunRefused", "__version__", "compose", "load", "paper_table", "run", "runs", "sweep", "table"]
API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """The library's functions (cl_bench/api.py), imported at their first use."""
    if name in API:
        from cl_bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'cl_bench' has no attribute {name!r}")
