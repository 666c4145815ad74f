"""The agent against the library of named scenarios
(tests/scenarios/<name>/scenario.yaml), each for its whole duration.

Three things are judged, each its own test so that a failure names what
broke:
- the journal: the run reproduces the scenario's `journal.expect` exactly;
  on a mismatch the test shows the unified diff. After an intended change of
  behaviour, rewrite the expected journals and review the diff:

      .venv/bin/python -m tests.scenarios.golden --update [NAME ...]

  (`tests.scenarios.golden` describes the run and the journal's format);
- the invariants an operator relies on (no error, no refused POST, one
  migration at a time and none during another one or a backup, no
  ping-pong), read from the simulator;
- the outcome the scenario's description promises, read from the
  simulator's state and request log, not from what the agent says.

Each scenario runs once per test session; the three tests read that run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from simlab.inprocess import AGENT_TOKEN, InProcessLab
from tests.scenarios import LIBRARY, journal_path, names
from tests.scenarios.golden import journal, mismatch, run

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


def expect_cpu_cascade(lab: InProcessLab) -> None:
    # first the room (a small guest between the two peers), then the guest
    # that needed it; the hottest guest stays and pve1 ends below cpu_max
    assert posted_vmids(lab) == [302, 102]
    assert lab.node_of(302) == "pve2" and lab.node_of(102) == "pve3"
    assert lab.node_of(101) == "pve1", "the hottest guest stays"
    assert lab.agent.estimator.estimates().node_cpu["pve1"] < 0.8


def expect_foreign(lab: InProcessLab) -> None:
    # The others' moves and the backup really ran, and the agent moved
    # nothing; the invariants forbid a POST while one of them ran.
    tasks = {(t.type, t.id, t.user) for t in lab.sim.tasks}
    assert ("qmigrate", "102", "root@pam") in tasks
    assert any(kind == "hamigrate" and vmid == "201" for kind, vmid, _ in tasks)
    assert any(kind == "vzdump" for kind, _, _ in tasks)
    assert lab.node_of(102) == "pve2" and lab.node_of(201) == "pve3"
    assert agent_posts(lab) == []


def expect_ha(lab: InProcessLab) -> None:
    assert lab.node_of(101) != lab.node_of(102), "negative affinity kept"
    assert 103 not in posted_vmids(lab), "a guest named in an affinity rule is left alone"


def expect_lab_three_agents(lab: InProcessLab) -> None:
    # what tests/integration/test_multi_agent.py relies on: one move of a
    # 6 GiB guest relieves pve1, the growing database stays
    assert len(agent_posts(lab)) == 1
    assert lab.node_of(107) == "pve1"
    assert lab.mem_fraction("pve1") <= 0.8


def expect_local_disks(lab: InProcessLab) -> None:
    assert set(posted_vmids(lab)) <= {106}
    assert len(lab.requests("GET", "/migrate")) >= 1


def expect_memory_hotspot(lab: InProcessLab) -> None:
    assert 1 <= len(agent_posts(lab)) <= 2
    assert lab.mem_fraction("pve1") <= 0.8


def expect_proactive_refused(lab: InProcessLab) -> None:
    assert agent_posts(lab) == [], "an uneven spread far from memory_max risks nothing"
    assert lab.mem_fraction("pve1") > 0.55


def expect_proactive_near_max(lab: InProcessLab) -> None:
    posts = agent_posts(lab)
    assert len(posts) == 1, "one move takes pve1 out of the risk band"
    assert posts[0].time - lab.started_at >= 30, "not before proactive_hold"
    assert lab.mem_fraction("pve1") < 0.70


OUTCOME: dict[str, Callable[[InProcessLab], None]] = {
    "balanced-3node": expect_balanced,
    "cpu-cascade": expect_cpu_cascade,
    "cpu-hotspot": expect_cpu_hotspot,
    "foreign-migration": expect_foreign,
    "ha-guest": expect_ha,
    "lab-three-agents": expect_lab_three_agents,
    "local-disk-guest": expect_local_disks,
    "memory-hotspot": expect_memory_hotspot,
    "proactive-imbalance": expect_proactive_refused,
    "proactive-near-max": expect_proactive_near_max,
}


@pytest.mark.parametrize("name", names())
def test_journal_is_the_golden_one(name: str) -> None:
    problem = mismatch(name, journal(run(name)))
    if problem is not None:
        pytest.fail(problem, pytrace=False)


@pytest.mark.parametrize("name", names())
def test_invariants_hold(name: str) -> None:
    check_invariants(run(name))


@pytest.mark.parametrize("name", sorted(OUTCOME))
def test_outcome_is_the_promised_one(name: str) -> None:
    OUTCOME[name](run(name))


def test_every_named_scenario_has_a_journal_and_an_outcome() -> None:
    assert names() == sorted(OUTCOME)
    assert [n for n in names() if not journal_path(n).is_file()] == []
    assert sorted(p.name for p in LIBRARY.glob("*.yaml")) == [], \
        "a named scenario is a directory: <name>/scenario.yaml"
