"""No import cycles inside `pve_balancer/` or `pvesim/`, checked from the source.

A cycle between two modules means neither can be read, tested or changed
without the other, and it works only as long as nobody reorders the imports.
The graph is built from the syntax tree of every module of the package
(subpackages included), without importing anything: `import a.b`,
`from a import b`, relative imports (`from . import x`, `from ..y import z`),
and `importlib.import_module("a.b")` with a literal name. An import inside a
function counts too: deferring it hides the cycle from the interpreter, not
from the reader. Only imports under `if TYPE_CHECKING:` are left out, since
they never run.

Importing a submodule also runs its package's `__init__`; that edge is not
added, because an `__init__` that re-exports its submodules is the usual
shape of a package, and Python handles it (the package is already in
`sys.modules` when the submodule asks for a sibling). An explicit
`from pkg import name` that resolves to the `__init__` does count.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `where` (file:line)."""

    source: str
    target: str
    where: str


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`: dotted name → file."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> list[ast.stmt | ast.Call]:
    """Import statements and `importlib.import_module(...)` calls anywhere in
    the tree, except in the body of an `if TYPE_CHECKING:`."""
    found: list[ast.stmt | ast.Call] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imports_of(module: str, path: Path, known: set[str], root: Path) -> list[Edge]:
    """Edges from `module` to the modules of `known` it imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pkg = _package_of(module, path.name == "__init__.py")
    edges: list[Edge] = []

    def add(target: str, node: ast.stmt | ast.Call) -> None:
        if target in known:
            edges.append(Edge(module, target, f"{path.relative_to(root)}:{node.lineno}"))

    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = pkg.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module or ""
            for alias in node.names:
                sub = f"{src}.{alias.name}"
                add(sub if sub in known else src, node)
        else:
            args = node.args
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                add(args[0].value, node)
    return edges


def import_graph(root: Path, package: str) -> dict[str, list[Edge]]:
    files = module_files(root, package)
    known = set(files)
    return {m: imports_of(m, p, known, root) for m, p in files.items()}


@dataclass(frozen=True)
class Cycle:
    """A group of modules that reach each other (a strongly connected
    component) and one shortest cycle through its smallest module."""

    modules: tuple[str, ...]
    edges: tuple[Edge, ...]


def find_cycles(graph: dict[str, list[Edge]]) -> list[Cycle]:
    """Every group of mutually importing modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            w = e.target
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles: list[Cycle] = []
    for comp in components:
        start = min(comp)
        self_loop = next((e for e in graph[start] if e.target == start), None)
        if len(comp) == 1:
            if self_loop is not None:
                cycles.append(Cycle((start,), (self_loop,)))
            continue
        # shortest way back to `start` inside the component (BFS)
        prev: dict[str, Edge] = {}
        frontier = [start]
        seen = {start}
        closing: Edge | None = None
        while frontier and closing is None:
            nxt: list[str] = []
            for v in frontier:
                for e in sorted(graph[v], key=lambda x: x.target):
                    if e.target == start:
                        closing = e
                        break
                    if e.target in comp and e.target not in seen:
                        seen.add(e.target)
                        prev[e.target] = e
                        nxt.append(e.target)
                if closing is not None:
                    break
            frontier = nxt
        assert closing is not None
        path = [closing]
        while path[0].source != start:
            path.insert(0, prev[path[0].source])
        cycles.append(Cycle(tuple(sorted(comp)), tuple(path)))
    return sorted(cycles, key=lambda c: c.modules)


def describe(cycles: list[Cycle]) -> str:
    lines = []
    for cycle in cycles:
        chain = " -> ".join([cycle.edges[0].source, *(e.target for e in cycle.edges)])
        lines.append(f"import cycle: {chain}")
        lines.extend(f"    {e.source} imports {e.target} at {e.where}" for e in cycle.edges)
        if len(cycle.modules) > len(cycle.edges):
            lines.append(f"    (modules tangled with it: {', '.join(cycle.modules)})")
    return "\n".join(lines)


def assert_no_cycles(package: str) -> None:
    cycles = find_cycles(import_graph(REPO, package))
    if cycles:
        pytest.fail(f"{package}: {len(cycles)} import cycle(s)\n{describe(cycles)}", pytrace=False)


def test_pvesim_has_no_import_cycles() -> None:
    assert_no_cycles("pvesim")


def test_pve_balancer_has_no_import_cycles() -> None:
    assert_no_cycles("pve_balancer")


# ---------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")


def test_checker_reports_lazy_relative_and_importlib_cycles(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def thing():\n    from . import a  # lazy\n    return a\n",
            "pkg/sub/__init__.py": "from .c import C\n",
            "pkg/sub/c.py": "import importlib\nC = importlib.import_module('pkg.sub.d')\n",
            "pkg/sub/d.py": "from ..sub import c\n",
            "pkg/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.f\n",
            "pkg/f.py": "import pkg.e\n",
        },
    )
    cycles = find_cycles(import_graph(tmp_path, "pkg"))
    text = describe(cycles)
    assert [[e.source for e in c.edges] for c in cycles] == [
        ["pkg.a", "pkg.b"],
        ["pkg.sub.c", "pkg.sub.d"],
    ], text
    assert "import cycle: pkg.a -> pkg.b -> pkg.a" in text
    assert "pkg.b imports pkg.a at " in text


def test_checker_passes_an_acyclic_package(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\n",
            "pkg/a.py": "from pkg import b\nA = b.B\n",
            "pkg/b.py": "import json\nB = 1\n",
        },
    )
    assert find_cycles(import_graph(tmp_path, "pkg")) == []

