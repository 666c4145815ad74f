"""Scenario loading: every named scenario loads; bad input names the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvesim.scenario import Scenario, ScenarioError, load_scenario
from pvesim.schedule import next_run
from tests.pvesim.simhelp import named
from tests.scenarios import names, scenario_path

BASE = {"nodes": [{"name": "pve1"}, {"name": "pve2"}], "guests": [{"vmid": 100, "node": "pve1"}]}


@pytest.mark.parametrize("name", names())
def test_named_scenarios_load_and_run(name: str) -> None:
    sc = load_scenario(scenario_path(name))
    assert sc.nodes and sc.description
    sim = named(name)
    sim.advance(60)
    assert sim.now == sc.start_time + 60


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"nodes": []}, "nodes: empty"),
        ({"guests": [{"vmid": 100, "node": "pve9"}]}, "guests[0].node: unknown node 'pve9'"),
        ({"guests": [{"vmid": 100, "node": "pve1", "cpus": 2}]}, "guests[0].cpus: unknown key"),
        ({"guests": [{"vmid": 100, "node": "pve1", "memory": "lots"}]}, "guests[0].memory"),
        (
            {"guests": [{"vmid": 100, "node": "pve1"}, {"vmid": 100, "node": "pve2"}]},
            "duplicate vmid 100",
        ),
        (
            {"events": [{"at": 5, "action": "explode"}]},
            "events[0].action: unknown action 'explode'",
        ),
        ({"events": [{"at": 5, "action": "power_off"}]}, "events[0].node: missing"),
        ({"sim": {"stepp": 1}}, "sim.stepp: unknown key"),
        (
            {"ha_rules": [{"rule": "r", "type": "resource-affinity", "resources": "vm:100"}]},
            "ha_rules[0].affinity",
        ),
        ({"backup_jobs": [{"id": "b", "schedule": "whenever"}]}, "backup_jobs[0].schedule"),
        ({"tokens": [{"id": "nobody"}]}, "tokens[0].id"),
    ],
)
def test_bad_scenarios_name_the_problem(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        Scenario.from_dict(BASE | patch, source="bad.yaml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("bad.yaml: ")


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("nodes:\n  - name: pve1\n  - {name: \n")
    with pytest.raises(ScenarioError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_scenario(p)


def test_schedule_next_run() -> None:
    # 2026-01-01 is a Thursday
    t0 = 1_767_225_600.0
    assert next_run("21:00", t0) == t0 + 21 * 3600
    assert next_run("*:15", t0) == t0 + 15 * 60
    assert next_run("sat 02:30", t0) == t0 + 2 * 86400 + 2.5 * 3600
    assert next_run("mon..fri 01:00", t0 + 3 * 3600) == t0 + 86400 + 3600
