"""The agent against the simulator's library of named scenarios
(tests/scenarios/*.yaml), each for its whole duration.

Every run must keep the invariants an operator relies on; each scenario
also has its own expected outcome (what its description promises).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simlab.inprocess import AGENT_TOKEN, InProcessLab, make_lab

HERE = Path(__file__).parent
MIGRATION_TASKS = {"qmigrate", "hamigrate", "vzmigrate"}


def agent_posts(lab: InProcessLab) -> list[Any]:
    return [r for r in lab.migrate_posts() if r.token_id == AGENT_TOKEN]


def posted_vmids(lab: InProcessLab) -> list[int]:
    return [int(p.path.split("/")[4]) for p in agent_posts(lab)]


def check_invariants(lab: InProcessLab) -> None:
    texts = [s for _, s in lab.sentences]
    assert not [s for s in texts if s.startswith("cycle failed")], "no unexpected error"
    assert all(p.status == 200 for p in agent_posts(lab)), "no refused POST"
    # one migration at a time, never during someone else's migration or a backup
    ours = {p.time for p in agent_posts(lab)}
    for post_time in ours:
        busy = [t for t in lab.sim.tasks
                if (t.type in MIGRATION_TASKS or t.type == "vzdump")
                and t.starttime < post_time and (t.endtime is None or t.endtime > post_time)]
        assert busy == [], f"POST at {post_time} while {[t.upid for t in busy]} ran"
    # no ping-pong: a guest the agent moved never goes back to where it was
    moves = [(m.vmid, m.source, m.target) for m in lab.sim.metrics.migrations
             if m.ok and m.user.startswith("pve-balancer@")]
    left: dict[int, set[str]] = {}
    for vmid, source, target in moves:
        assert target not in left.get(vmid, set()), f"vm {vmid} ping-pong to {target}"
        left.setdefault(vmid, set()).add(source)


def expect_balanced(lab: InProcessLab) -> None:
    assert agent_posts(lab) == []


def expect_cpu_hotspot(lab: InProcessLab) -> None:
    assert lab.node_of(101) == "pve1", "the hottest guest stays"
    assert len(agent_posts(lab)) == 1
    assert lab.agent.estimator.estimates().node_cpu["pve1"] < 0.8


def expect_foreign(lab: InProcessLab) -> None:
    # the invariants already forbid POSTs during the foreign moves and the backup
    assert any("migration running" in s or "backup" in s for _, s in lab.sentences)


def expect_ha(lab: InProcessLab) -> None:
    assert lab.node_of(101) != lab.node_of(102), "negative affinity kept"
    assert 103 not in posted_vmids(lab), "a guest named in an affinity rule is left alone"


def expect_local_disks(lab: InProcessLab) -> None:
    assert set(posted_vmids(lab)) <= {106}
    assert len(lab.requests("GET", "/migrate")) >= 1


def expect_memory_hotspot(lab: InProcessLab) -> None:
    assert 1 <= len(agent_posts(lab)) <= 2
    assert lab.mem_fraction("pve1") <= 0.8


def expect_proactive(lab: InProcessLab) -> None:
    assert 1 <= len(agent_posts(lab)) <= 2
    fractions = [lab.mem_fraction(n) for n in ("pve1", "pve2", "pve3")]
    assert fractions[0] <= 1.2 * sum(fractions) / 3 + 1e-9


EXPECTED: dict[str, Callable[[InProcessLab], None]] = {
    "balanced-3node": expect_balanced,
    "cpu-hotspot": expect_cpu_hotspot,
    "foreign-migration": expect_foreign,
    "ha-guest": expect_ha,
    "local-disk-guest": expect_local_disks,
    "memory-hotspot": expect_memory_hotspot,
    "proactive-imbalance": expect_proactive,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_scenario(name: str) -> None:
    from pvesim.scenario import load_scenario

    path = HERE / f"{name}.yaml"
    duration = load_scenario(path).duration
    lab = make_lab(path, warmup=0)
    lab.run(duration)
    check_invariants(lab)
    EXPECTED[name](lab)


def test_every_named_scenario_has_an_expectation() -> None:
    names = {p.stem for p in HERE.glob("*.yaml")} - {"lab-three-agents"}
    assert names <= set(EXPECTED), names - set(EXPECTED)
