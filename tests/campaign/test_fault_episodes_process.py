"""API fault episodes against a real `pve-balancer run` (slow tier).

One agent on pve1 of `pvesim serve --pmxcfs` (lab-three-agents, hotspot
at 25 s), then one episode per pvesim fault kind, each on another of the
endpoints the agent reads every cycle or every minute, `ON` seconds each
with `OFF` seconds between. The in-process matrix (`test_fault_matrix.py`)
covers every kind on every endpoint; this proves the same discipline with
the real process, its real stderr and HTTPS:
- the process never exits and never prints a traceback;
- at most two WARNING-or-worse lines per episode (from its start to the
  next episode's start);
- at most one migration at a time, every POST by the leader's node;
- the token secret in none of its output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvesim.faults import KINDS
from tests.campaign.endpoints import ENDPOINTS
from tests.campaign.process_campaign import outputs, secret_of, start_lab, verdict
from tests.integration.lab import ProcessLab, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

ON = 16.0
OFF = 8.0
PER_CYCLE = [e for e in ENDPOINTS if e.name in ("resources", "tasks", "rules", "options",
                                                "backup", "manager-status")]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ProcessLab]:
    started = start_lab(tmp_path)
    yield started
    started.stop()


def test_one_episode_per_fault_kind_on_a_real_agent(lab: ProcessLab) -> None:
    agent = lab.start_agent("pve1")
    lab.wait_leader(30)
    wait_for("the hotspot's move to end",
             lambda: any(m["end"] for m in lab.migrations()), 120, step=0.5)
    windows: list[tuple[str, float, float]] = []
    for i, kind in enumerate(KINDS):
        endpoint = PER_CYCLE[i % len(PER_CYCLE)]
        spec: dict[str, object] = {"kind": kind, "method": endpoint.method,
                                   "path": endpoint.path}
        if kind == "missing_fields":
            spec["fields"] = endpoint.field
        if kind == "timeout":
            spec["seconds"] = 30.0
        if kind == "latency":
            spec["seconds"] = 3.0
        start = time.time()
        fault = lab.ctl.add_fault(**spec)
        time.sleep(ON)
        lab.ctl.call("DELETE", f"/faults/{fault['id']}")
        time.sleep(OFF)
        windows.append((f"{kind} on {endpoint.path}", start, time.time()))
        assert agent.alive, lab.report()
    lines = agent.snapshot()
    report = lab.report()
    assert not any("Traceback" in x.text for x in lines), report
    floods = []
    for what, start, end in windows:
        loud = [x for x in lines if x.level in ("WARNING", "ERROR", "CRITICAL")
                and start <= x.t < end]
        if len(loud) > 2:
            floods.append(f"{what}: {len(loud)} warning lines\n  " +
                          "\n  ".join(x.text for x in loud))
    assert floods == [], "\n".join(floods)
    v = verdict(lab)
    assert v.overlapping() == [], report
    assert {p["served_by"] for p in v.posts} <= {"pve1"}, v.posts
    secret = secret_of(lab)
    assert [n for n, text in outputs(lab).items() if secret in text] == []
