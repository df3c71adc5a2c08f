"""The package's imports go one way (issue 25): a low layer that imports nothing of cl_bench's; data, models and
the records a run writes above it; methods above those; the engine above methods; the report and the loggers
above the engine; the command line on top. No module imports one of a higher layer or of a sibling package of
its own layer, and no two modules import each other, even through others (type-only and in-function imports
count: they are arrows too)."""

from __future__ import annotations

import ast
from pathlib import Path

import cl_bench

PACKAGE = Path(cl_bench.__file__).parent
# The layer of each subpackage (its first dotted part); a module may import its own package and lower layers.
LAYERS = {
    "core": 0,
    "data": 1, "models": 1, "records": 1,
    "methods": 2,
    "engine": 3,
    "report": 4, "loggers": 4,
    "cli": 5, "api": 5,
}
TOP = 6  # the package's own __init__: the public API, above everything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The cl_bench modules (of `modules`) `path` imports, wherever the import stands (type-only and in-function
    ones too); `from cl_bench.engine import trainer_state` imports the module trainer_state."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cl_bench":
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {node.module})
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "cl_bench")
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer, package) of a module of cl_bench."""
    parts = module.split(".")
    if len(parts) == 1:
        return TOP, "cl_bench"
    if parts[1] == "conf":
        return 0, "conf"
    return LAYERS[parts[1]], parts[1]


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if "conf" not in path.parts}
    return {name: {target for target in imports_of(path, set(modules)) if target != name}
            for name, path in modules.items()}


def test_every_subpackage_has_a_layer():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")} - {"conf"}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_no_module_imports_upward_or_sideways():
    wrong = []
    for module, targets in graph().items():
        layer, package = layer_of(module)
        for target in targets:
            target_layer, target_package = layer_of(target)
            if target_package != package and target_layer >= layer:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return [*path, module, target]
            if target in edges and target not in state:
                found = walk(target, [*path, module])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            circle = walk(module, [])
            assert circle is None, " -> ".join(circle)
