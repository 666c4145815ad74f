"""Scenario files: the cluster, its guests and what happens to them.

A scenario is YAML (see docs/simulator.md for the full format). A `Scenario`
is its validated content: `load_scenario(path)` reads a file and
`Scenario.from_dict(data)` takes already parsed data; both check everything
up front (`pvesim.scenario_parse`) and raise `ScenarioError` naming the
offending key. The parts (nodes, guests, rules, …) are the records of
`pvesim.specs`. Expansion of trace-generated guests happens when the
simulator is built (`pvesim.workload`), because it depends on the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pvesim.scenario_parse import Parser
from pvesim.specs import (
    DEFAULT_START,
    BackupSpec,
    EventSpec,
    GenerateSpec,
    GuestSpec,
    NodeSpec,
    RuleSpec,
    ScenarioError,
    SimParams,
    TokenSpec,
)

__all__ = ["Scenario", "ScenarioError", "load_scenario"]


@dataclass
class Scenario:
    name: str
    nodes: list[NodeSpec]
    guests: list[GuestSpec] = field(default_factory=list)
    generate: GenerateSpec | None = None
    rules: list[RuleSpec] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    backups: list[BackupSpec] = field(default_factory=list)
    tokens: list[TokenSpec] | None = None
    pools: dict[str, list[int]] = field(default_factory=dict)
    events: list[EventSpec] = field(default_factory=list)
    sim: SimParams = field(default_factory=SimParams)
    cpu_max: float = 0.8
    memory_max: float = 0.8
    start_time: float = DEFAULT_START
    duration: float = 3600.0
    cluster_name: str = "pvesim"
    description: str = ""
    trace_file: Path | None = None
    # the agent's balancer.yaml for this scenario; the simulator ignores it
    balancer_config: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any, source: str = "scenario") -> Scenario:
        return cls(**Parser(source, None).scenario(data))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{p.name}{line}: invalid YAML: {exc}") from exc
    return Scenario(**Parser(p.name, p.parent).scenario(data))
