"""The shape of the code: no import circle inside ``revbench/``.

Every ``import`` and ``from ... import`` naming a revbench module counts, at module level or
inside a function (an import inside a function still ties the two modules together); imports
under ``if TYPE_CHECKING:`` do not (they never run). A package's ``__init__`` importing its own
submodules to re-export them, and a submodule being imported through its package, are ordinary
Python and not circles: only the imports written in the code are edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import revbench

ROOT = Path(revbench.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = ["revbench", *f.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = f
    return mods


def _imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported revbench module, line) for every import ``module`` runs."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.startswith("revbench"):
                    found.append((alias.name, node.lineno))

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if not name.startswith("revbench"):
                return
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                found.append((sub if sub in known else name, node.lineno))

    Visitor().visit(ast.parse(path.read_text()))
    for name, line in found:
        target = resolve(name)
        if target and target != module:
            yield target, line


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    known = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in known}
    for module, path in known.items():
        for target, line in _imports(module, path, known):
            graph[module].setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_revbench() -> None:
    graph = import_graph()
    found = cycles(graph)
    detail = [
        f"{a} -> {b} (line {graph[a][b]})"
        for comp in found
        for a in comp
        for b in comp
        if b in graph[a]
    ]
    assert not found, "import circles:\n" + "\n".join(detail)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # local.py imports run_job inside LocalExecutor.map
    assert "revbench.caserun" in graph["revbench.executors.local"]
    # ...and not those under TYPE_CHECKING (measure/step.py names Case only for type hints)
    assert "revbench.case" not in graph["revbench.measure.step"]


def test_reading_and_running_a_suite_imports_no_torch() -> None:
    """The command line, suite validation, the planner's table and the runner import without
    torch (the case processes import it): ``revbench validate``/``list``/``run`` start in a
    fraction of a second, and a run's runner does not compete with its case processes for the
    cores while they import torch."""
    import subprocess
    import sys

    code = (
        "import sys, revbench.cli, revbench.runner, revbench.suite, revbench.caserun;"
        "from revbench.shipped import resolve_suite;"
        "from revbench.suite import load_suite;"
        "load_suite(resolve_suite('quickstart'));"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
