"""The library of named scenarios: `tests/scenarios/<name>/scenario.yaml`,
each next to `journal.expect`, the agent's journal a run of it must
reproduce (see `tests.scenarios.golden`). The simulator's own tests and the
multi-agent lab use the same scenarios."""

from __future__ import annotations

from pathlib import Path

LIBRARY = Path(__file__).resolve().parent
SCENARIO_FILE = "scenario.yaml"
JOURNAL_FILE = "journal.expect"


def names() -> list[str]:
    """Every named scenario, sorted."""
    return sorted(p.parent.name for p in LIBRARY.glob(f"*/{SCENARIO_FILE}"))


def scenario_path(name: str) -> Path:
    return LIBRARY / name / SCENARIO_FILE


def journal_path(name: str) -> Path:
    return LIBRARY / name / JOURNAL_FILE
