"""SIGKILL of the leader at each step of its cycle, with real processes.

`pvesim serve --pmxcfs` and real `pve-balancer run` agents on the
lab-three-agents cluster (hotspot on pve1 brought forward to 25 s; one move
relieves it and no second is needed). The leader is killed at a step of
its cycle (see `process_campaign.STEPS` and how a held answer pins the
step), then either a standby takes over after the lock expires or the
agent is restarted on the same node, which resumes the lock at once.

Witness: the simulator's request log and migration list. Whatever step the
kill hit, the cluster must see exactly one migration POST (the hotspot
needs one move), no two migrations at a time, no POST while a migration
runs or before the statistics of its end are published, the hotspot
relieved, and no output of any agent carrying the token secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.campaign.process_campaign import (
    STAT_INTERVAL,
    STEPS,
    kill_at,
    outputs,
    secret_of,
    start_lab,
    verdict,
)
from tests.integration.lab import Agent, ProcessLab, wait_for

pytestmark = pytest.mark.fuse

OBSERVE = 30.0
"""Simulated seconds watched after the last migration ended: a second POST
for the same cause comes within a few cycles of the end (issue 10's trace:
1 s after it)."""
@pytest.fixture
def labs() -> Iterator[list[ProcessLab]]:
    started: list[ProcessLab] = []
    yield started
    for lab in started:
        lab.stop()


def _standbys(lab: ProcessLab, leader: Agent) -> list[Agent]:
    others = [lab.start_agent(n) for n in lab.nodes if n != leader.node]
    for agent in others:
        wait_for(f"{agent.node} to stand by",
                 lambda a=agent: any("standby" in x.text for x in a.snapshot()), 30)
    return others


def _run(labs: list[ProcessLab], tmp_path: Path, step: str, takeover: str) -> None:
    lab = start_lab(tmp_path)
    labs.append(lab)
    leader = lab.start_agent("pve1")
    lab.wait_leader(30)
    survivors = _standbys(lab, leader) if takeover == "standby" else []
    kill_at(lab, leader, STEPS[step])
    if takeover == "restart":
        survivors = [lab.start_agent("pve1")]
    new = lab.wait_leader(60, among=survivors)
    wait_for("a migration to end",
             lambda: any(m["end"] is not None for m in lab.migrations()), 120)
    wait_for("the observation window",
             lambda: lab.sim_now() > max(m["end"] for m in lab.migrations()) + OBSERVE, 120,
             step=0.5)
    report = lab.report()
    v = verdict(lab)
    assert all(a.alive for a in survivors), report
    assert lab.overlaps() == [], report  # never two leaders, by their own lines
    assert v.overlapping() == [], report
    assert v.early_posts(STAT_INTERVAL) == [], f"{v.posts}\n{v.migrations}\n{report}"
    assert len(v.posts) == 1, f"{v.posts}\n{v.migrations}\n{report}"
    assert [p["served_by"] for p in v.posts] in (["pve1"], [new.node]), v.posts
    assert lab.node_memory()["pve1"] <= 0.8, report
    secret = secret_of(lab)
    leaked = [name for name, text in outputs(lab).items() if secret in text]
    assert leaked == [], f"the token secret appears in {leaked}"


CASES = [
    ("after-sampling", "standby"),
    ("after-preconditions", "standby"),
    ("after-post", "standby"),
    ("during-follow", "standby"),
    ("after-sampling", "restart"),
    ("after-preconditions", "restart"),
    ("after-post", "restart"),
    ("during-follow", "restart"),
]


def _params() -> list[object]:
    out: list[object] = []
    for step, takeover in CASES:
        out.append(pytest.param(step, takeover, id=f"{step}-{takeover}"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("step", "takeover"), _params())
def test_sigkill_at_a_step_never_moves_twice(labs: list[ProcessLab], tmp_path: Path, step: str,
                                             takeover: str) -> None:
    _run(labs, tmp_path, step, takeover)
