"""The package as installed: every subpackage and every config file goes into the wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from cl_bench.core.layout import CONFIG_DIR

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_and_the_configs_are_listed_for_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cl_bench").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"cl_bench.conf"}
    assert setuptools["package-dir"] == {"cl_bench.conf": "conf"}
    assert (ROOT / "conf" / "__init__.py").exists()


def test_the_configs_are_read_through_the_package():
    assert CONFIG_DIR == Path(str(resources.files("cl_bench.conf")))
    assert (CONFIG_DIR / "config.yaml").exists() and (CONFIG_DIR / "method" / "ewc.yaml").exists()
