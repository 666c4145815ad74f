"""docs/operations.md names a test for every failure mode it lists; each
named test must exist, so the table cannot point at a test that was renamed
or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def named_tests() -> list[tuple[str, str]]:
    """(file, test) pairs from the test column of the tables; `::name`
    continues the file named before it in the same cell."""
    pairs: list[tuple[str, str]] = []
    for line in (REPO / "docs" / "operations.md").read_text().splitlines():
        if not line.startswith("|") or "::" not in line:
            continue
        cell = line.rstrip(" |").rsplit("|", 1)[-1]
        current = ""
        for file, name in re.findall(r"`(?:([\w/]+\.py))?::(\w+)`", cell):
            current = file or current
            pairs.append((current, name))
    return pairs


def test_every_test_named_in_the_failure_tables_exists() -> None:
    pairs = named_tests()
    assert len(pairs) > 20
    for file, name in pairs:
        path = next((p for p in (REPO / "tests").rglob(Path(file).name)), None)
        assert path is not None, f"{file} (for {name}) not found under tests/"
        functions = {n.name for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"docs/operations.md names {file}::{name}, which does not exist"
