"""Fencing with real processes: a leader stalled right before its migrate
POST, past the lock's lifetime, never POSTs once it resumes.

Three `pve-balancer run` processes against `python -m pvesim serve
--pmxcfs` at lab timing (10 s lock lifetime, renew 2 s, safety bound 5 s,
retry 2 s, 2 s cycles; `lab.FAST`). The memory hotspot on pve1 starts 20 s
into the run. Every GET /version answers 4 s late: the version probe is the
last request before the POST, so when the simulator has answered the
leader's migrate-preconditions GET the leader is, for 4 s, in the window
between deciding and POSTing. The test stops it there with SIGSTOP for
16 s (the stall the issue measured): a standby takes the expired lock and
starts its own migration; then SIGCONT.

Witness: the simulator's request log (`served_by` is the node whose API got
the request; each agent talks only to its own node's API) and its list of
migrations (start and end).
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.lab import FAST, LAB_SCENARIO, ProcessLab, wait_for

pytestmark = pytest.mark.fuse

STALL = 16.0
VERSION_LATENCY = 4.0
HOTSPOT_AT = 20


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ProcessLab]:
    doc = yaml.safe_load(LAB_SCENARIO.read_text(encoding="utf-8"))
    doc["start_time"] = int(time.time())
    for guest in doc["guests"]:
        for step in guest.get("demand", {}).get("steps", []):
            step["at"] = HOTSPOT_AT
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    started = ProcessLab.start(tmp_path / "lab", scenario, FAST)
    try:
        yield started
    finally:
        started.stop()


def _preconditions_asked(lab: ProcessLab, node: str) -> dict[str, Any] | None:
    return next((e for e in lab.requests() if e["method"] == "GET" and e["served_by"] == node
                 and e["path"].startswith(f"/nodes/{node}/qemu/")
                 and e["path"].endswith("/migrate")), None)


def test_a_leader_stalled_before_its_post_never_posts_after_its_lock_expired(
        lab: ProcessLab) -> None:
    lab.ctl.add_fault(kind="latency", method="GET", path="/version", seconds=VERSION_LATENCY)
    first = lab.start_agent("pve1")
    lab.wait_leader(30)
    others = [lab.start_agent(n) for n in ("pve2", "pve3")]
    for agent in others:
        wait_for(f"{agent.node} to stand by",
                 lambda a=agent: any("standby" in x.text for x in a.snapshot()), 30)

    wait_for("the leader to ask PVE whether its guest can move",
             lambda: _preconditions_asked(lab, "pve1"), 90, step=0.05)
    first.proc.send_signal(signal.SIGSTOP)
    stopped_at = lab.sim_now()
    try:
        successor = wait_for("a standby to take over from the stalled leader",
                             lambda: next((a for a in others if a.became_leader_after(0)),
                                          None), STALL)
        time.sleep(max(0.0, stopped_at + STALL - lab.sim_now()))
    finally:
        first.proc.send_signal(signal.SIGCONT)
    resumed_at = lab.sim_now()
    wait_for("the resumed agent to report its cycle",
             lambda: any(x.t >= resumed_at and ("stepped down" in x.text
                                                or "not migrating" in x.text
                                                or "started task" in x.text)
                         for x in first.snapshot()), 20)
    # the successor reads the term's slow facts (one per cycle) before it
    # decides, then starts its own migration
    wait_for("the successor to start its own migration",
             lambda: any(p["served_by"] == successor.node for p in lab.migrate_posts()), 40)
    time.sleep(4)  # room for a late POST to show in the log

    report = lab.report()
    posts = lab.migrate_posts()
    late = [p for p in posts if p["served_by"] == "pve1" and p["time"] >= stopped_at]
    assert not late, f"the stalled leader POSTed after its lock could have been taken: " \
        f"{late}\n{report}"
    assert any(p["served_by"] == successor.node for p in posts), \
        f"the successor should have started its own migration: {posts}\n{report}"
    moves = sorted((m["start"], m["end"] if m["end"] is not None else float("inf"), m["vmid"])
                   for m in lab.migrations())
    overlapping = [(a, b) for a, b in itertools.pairwise(moves) if b[0] < a[1]]
    assert not overlapping, f"overlapping migrations: {overlapping}\n{report}"
    said = [x.text for x in first.snapshot() if x.t >= resumed_at]
    assert any("not migrating vm" in t and "leadership could not be confirmed" in t
               for t in said), f"the fence, not luck, kept it from POSTing\n{report}"
