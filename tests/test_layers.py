"""The house's structure, checked: layer contracts (import-linter) and no import cycle anywhere.

The contracts live in pyproject.toml ([tool.importlinter]); docs/architecture.md draws them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    done = subprocess.run(
        # import-linter's own command, installed beside this Python (the dev extra)
        [Path(sys.executable).with_name("lint-imports"), "--config", ROOT / "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def find_cycle(graph: grimp.ImportGraph, modules: set[str]) -> list[str] | None:
    """One import cycle among `modules` (as the list of modules around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module) & modules):
            if state.get(imported) == 1:
                return path[path.index(imported) :] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(modules):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_of_forgeml_is_part_of_an_import_cycle() -> None:
    """Every import counts: at module level, inside functions and under TYPE_CHECKING."""
    graph = grimp.build_graph("forgeml", cache_dir=None)
    cycle = find_cycle(graph, set(graph.modules))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """A check that cannot fail is no check: a graph with a cycle is reported."""
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c", "a.d"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    graph.add_import(importer="a.c", imported="a.d")
    assert find_cycle(graph, {"a.b", "a.c", "a.d"}) is None
    graph.add_import(importer="a.d", imported="a.b")
    assert find_cycle(graph, {"a.b", "a.c", "a.d"}) == ["a.b", "a.c", "a.d", "a.b"]
