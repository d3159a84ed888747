"""envkit's modules as layers: no import cycle, and nothing under the shells or the pipeline imports them.

The graph is read from the source (``ast``), not by importing: an import inside
a function counts (it runs, later); one under ``if TYPE_CHECKING:`` counts for
the layers but not for cycles, since it never runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import envkit

PACKAGE = Path(envkit.__file__).parent

#: The thin shells over the library: nothing else in envkit imports them.
SHELLS = ("envkit.cli", "envkit.pytest_plugin", "envkit.pytest")
#: The pipeline: only what stands on top of it imports it.
PIPELINE = "envkit.lifecycle"
ABOVE_THE_PIPELINE = {
    "envkit",  # the public API: envkit.up, envkit.environment (imported on first use)
    "envkit.ci",  # the Environment it reports on, for types only
    "envkit.probe",  # a throwaway environment for `envkit init` and `envkit doctor`
}
#: Cycles that predate this test, in modules being rebuilt for issue 12 (exports). Each entry goes when its cycle
#: does; a new cycle is never added here.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> dict[str, bool]:
    """The envkit modules ``name`` imports, each with whether only for type checking."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, bool] = {}

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]

    def walk(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in targets(child):
                    if target in MODULES and target != name:
                        found[target] = found.get(target, True) and typing_only
            elif isinstance(child, ast.If) and _type_checking(child):
                for inner in child.body:
                    walk(ast.Module(body=[inner], type_ignores=[]), True)
                for inner in child.orelse:
                    walk(ast.Module(body=[inner], type_ignores=[]), typing_only)
            else:
                walk(child, typing_only)

    walk(ast.parse(path.read_text(), str(path)), False)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _is(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def _tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import one another, directly or not (strongly connected, Tarjan's way)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """One shortest cycle through the group's first module, to show in a failure."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{group} is not a cycle")  # pragma: no cover


def test_the_graph_is_read() -> None:
    """The reader sees top-level, function-level and type-only imports (or every rule below passes vacuously)."""
    assert GRAPH["envkit.lifecycle"]["envkit.watchdog"] is False
    assert GRAPH["envkit.watchdog"]["envkit.recorded"] is False  # imported inside a function
    assert GRAPH["envkit.ci"]["envkit.lifecycle"] is True  # under TYPE_CHECKING
    assert "envkit.pytest.plugin" in GRAPH["envkit.pytest.hooks"]  # a sibling in a sub-package


def test_no_import_cycle() -> None:
    runtime = {name: {target for target, typing_only in imports.items() if not typing_only} for name, imports in GRAPH.items()}
    tangles = [frozenset(group) for group in _tangles(runtime)]
    new = [" -> ".join(_cycle_in(runtime, set(group))) for group in tangles if group not in KNOWN_CYCLES]
    assert not new, "import cycles in envkit (move what both need into a lower module, or pass it in):\n" + "\n".join(new)
    gone = [sorted(known) for known in KNOWN_CYCLES if known not in tangles]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES in {__file__}: {gone}"


def test_nothing_below_imports_a_shell() -> None:
    """The CLI and the pytest plugin are shells over the library: the library never imports them."""
    upward = [f"{name} imports {target}" for name, imports in GRAPH.items() for target in imports
              if any(_is(target, shell) for shell in SHELLS) and not any(_is(name, shell) for shell in SHELLS)]
    assert not upward, "\n".join(upward)


def test_only_what_stands_on_the_pipeline_imports_it() -> None:
    importers = {name for name, imports in GRAPH.items() if PIPELINE in imports}
    below = sorted(name for name in importers if name not in ABOVE_THE_PIPELINE and not any(_is(name, s) for s in SHELLS))
    assert not below, (f"{', '.join(below)} import {PIPELINE}: the pipeline's own layers must not; what they need from it "
                       "belongs in a lower module (envkit.recorded, envkit.handoff), or the module is above it")
    for name in sorted(GRAPH[PIPELINE]):  # and what the pipeline stands on never reaches back up
        assert not any(_is(name, shell) for shell in SHELLS), f"{PIPELINE} imports the shell {name}"


def test_the_plugin_package_imports_the_real_pytest() -> None:
    """``envkit.pytest`` is a sub-package: its ``import pytest`` must be pytest itself, never the package."""
    from envkit.pytest import fixtures, hooks, plugin

    for module in (fixtures, hooks, plugin):
        assert module.pytest is pytest
    assert PACKAGE not in Path(pytest.__file__).resolve().parents


def test_the_face_reexports_every_hook_and_fixture() -> None:
    """pytest registers only ``envkit.pytest_plugin``: whatever the package defines and the face lacks never runs."""
    from envkit import pytest_plugin
    from envkit.pytest import fixtures, hooks

    defined = [name for module in (fixtures, hooks) for name, value in vars(module).items()
               if getattr(value, "__module__", None) == module.__name__
               and (name.startswith("pytest_") or hasattr(value, "_fixture_function_marker"))]
    assert len(defined) > 20
    missing = [name for name in defined
               if getattr(pytest_plugin, name, None) is not getattr(fixtures, name, getattr(hooks, name, None))]
    assert not missing, f"envkit.pytest_plugin does not re-export {missing}"
