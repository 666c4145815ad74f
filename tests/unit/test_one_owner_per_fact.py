"""Each fact about the outside world is coded in one module (docs/architecture.md):
paths below the PVE root in `paths.py`, the pmxcfs lock syscalls in
`election.py`, the staleness rule of the published status in `status.py`.
Read from the source, so a second copy fails here when it is written."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pve_balancer"


def _modules() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.glob("*.py"))}


def _where(predicate: type[ast.AST] | tuple[type[ast.AST], ...], test: object) -> set[str]:
    found: set[str] = set()
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, predicate) and test(node):  # type: ignore[operator]
                found.add(name)
    return found


def test_paths_below_the_pve_root_are_joined_only_in_paths_module() -> None:
    def joins_a_literal(node: ast.BinOp) -> bool:
        # (paths relative to the package's own files, e.g. the shipped
        # example configuration, are not below the PVE root)
        own_file = any(isinstance(n, ast.Name) and n.id == "__file__"
                       for n in ast.walk(node.left))
        return isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
            and isinstance(node.right.value, str) and not own_file

    assert _where(ast.BinOp, joins_a_literal) == {"paths.py"}


def test_lock_syscalls_only_in_the_election_module() -> None:
    def lock_call(node: ast.Call) -> bool:
        f = node.func
        return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
            and f.value.id == "os" and f.attr in {"mkdir", "rmdir", "utime"}

    assert _where(ast.Call, lock_call) == {"election.py"}


def test_members_file_is_parsed_only_in_the_election_module() -> None:
    readers = _where(ast.Call, lambda n: isinstance(n.func, ast.Name)
                     and n.func.id == "read_membership")
    assert readers <= {"election.py", "provision.py"}
    assert _where(ast.FunctionDef, lambda n: n.name == "read_membership") == {"election.py"}


def test_staleness_rule_is_defined_once() -> None:
    assert _where(ast.FunctionDef, lambda n: n.name == "is_stale") == {"status.py"}
    # nobody else compares a status document's age with its refresh period
    def refresh_arithmetic(node: ast.BinOp) -> bool:
        return any(isinstance(side, ast.Name) and side.id == "refresh"
                   for side in (node.left, node.right)) and isinstance(node.op, ast.Mult)

    assert _where(ast.BinOp, refresh_arithmetic) <= {"status.py"}
