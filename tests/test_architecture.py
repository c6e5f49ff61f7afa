"""The layering of `src/sake`: imports point down only, and no modules import each other.

Layers, top to bottom (`../shared/DESIGN.md`): tasks and bench, training, runner, methods,
hypernets and evaluation, models, data and utils. Every `from sake... import` counts, those
inside functions and under `TYPE_CHECKING` included. Run `pytest tests/test_architecture.py`
to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
LAYER_RANKS = {
    "utils": 0,
    "data": 0,
    "models": 1,
    "hypernets": 2,
    "evaluation": 2,
    "methods": 3,
    "runner": 4,
    "training": 5,
    "tasks": 6,
    "bench": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, a `from package import module` naming the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sake"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sake"))
    return found & known


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SOURCE / "sake").rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(path, known) - {name} for name, path in paths.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sake"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = import_graph()
    assert len(found) > 100 and "sake.runner" in found
    return found


def test_imports_point_down_the_layers(graph: dict[str, set[str]]) -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if layer(module) in LAYER_RANKS
        and layer(target) in LAYER_RANKS
        and LAYER_RANKS[layer(target)] > LAYER_RANKS[layer(module)]
    ]
    assert upward == []


def test_no_modules_import_each_other(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("sake.tasks.edit") == "tasks" and LAYER_RANKS["tasks"] > LAYER_RANKS["runner"]
