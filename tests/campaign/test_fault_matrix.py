"""Every fault kind of pvesim on every endpoint the agent uses, in process.

Each case: the lab-three-agents cluster whose pve1 crosses memory_max a
minute after the agent starts, and one fault episode on one endpoint
(`FaultInjector` between the agent's real client and the simulator) from
the agent's first cycle for `EPISODE` simulated seconds, then cleared.
Checked per case:
- no cycle ends in "cycle failed" (an uncaught exception) and nothing
  else logs a traceback;
- the journal tells the episode in at most two warning lines (issue 10:
  once when it starts and once more only if its cause changes; the end is
  an INFO line);
- at most one migration at a time, and none while the fault keeps a fact
  the policy needs from being read fresh (fail closed): for the slow
  endpoints (rules, options, backup jobs, HA status) a fault that makes
  the answer unusable means no migration during the episode;
- the token secret in no line, traceback or field;
- after the episode the hotspot is relieved (the agent recovers).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pve_balancer.config import Config
from simlab.inprocess import make_lab
from tests.campaign.endpoints import ENDPOINTS, Endpoint
from tests.campaign.inprocess_campaign import Journal, Witness
from tests.scenarios import scenario_path

EPISODE = 300.0
AFTER = 150.0
WARMUP = 60.0  # the scenario's hotspot comes 120 s in: a minute into the agent's run


KINDS = ["latency", "timeout", "connection_reset", "http_error", "malformed_json",
         "truncated_json", "missing_fields"]
FAILED_START = {"timeout", "connection_reset", "http_error"}
UNREADABLE = {"timeout", "connection_reset", "http_error", "malformed_json", "truncated_json"}

CASES = [(e, k) for e in ENDPOINTS for k in KINDS]


def _fault_spec(endpoint: Endpoint, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": kind, "method": endpoint.method, "path": endpoint.path}
    if kind == "latency":
        spec["seconds"] = 4.0
    if kind == "timeout":
        spec["seconds"] = 30.0
    if kind == "missing_fields":
        spec["fields"] = (endpoint.field,)
    return spec


def run_case(endpoint: Endpoint, kind: str) -> tuple[Witness, Journal, float, float, int]:
    """The run; returns what witnesses it, the episode's start and end and
    how often the fault fired (a request answered by the fault never
    reaches the simulator's request log)."""
    lab = make_lab(scenario_path("lab-three-agents"), Config(seed=1, interval=5),
                   warmup=WARMUP, faults=True)
    assert lab.faults is not None
    journal = Journal(lab.sim)
    with journal.capture():
        t0 = lab.sim.now
        fault = lab.faults.add(**_fault_spec(endpoint, kind))
        lab.run(EPISODE)
        fired = next(f.fired for f in lab.faults.faults if f.id == fault.id)
        lab.faults.remove(fault.id)
        t1 = lab.sim.now
        lab.run(AFTER)
    return Witness(lab), journal, t0, t1, fired


def _id(case: tuple[Endpoint, str]) -> str:
    return f"{case[0].name}-{case[1]}"


BREAKER_FAILURES = 3
"""The circuit breaker's documented default (`breaker_failures`)."""
LINES_PER_ATTEMPT = 3
"""A migration start that fails may tell: no answer, the cycle overrun it
caused, and that it did not start."""


def _params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        out.append(pytest.param(*case, id=_id(case)))
    return out


@pytest.mark.parametrize(("endpoint", "kind"), _params())
def test_one_fault_episode(endpoint: Endpoint, kind: str) -> None:
    witness, journal, t0, t1, fired = run_case(endpoint, kind)
    lab = witness.lab
    text = journal.text()
    secret = lab.sim.tokens["pve-balancer@pve!agent"]
    assert secret not in text
    assert not [s for _, s in lab.sentences if s.startswith("cycle failed")], text
    assert "Traceback" not in text, text
    warnings = journal.warnings(t0, t1 + 60.0)
    shown = "\n".join(f"{r.t:.0f} {r.text}" for r in warnings)
    if endpoint.name == "migrate":
        # Each failed start is its own event (another guest, another line);
        # the breaker bounds how many there are, then says so once more.
        assert fired <= BREAKER_FAILURES, f"{fired} migration starts failed\n{shown}"
        assert len(warnings) <= LINES_PER_ATTEMPT * BREAKER_FAILURES + 2, shown
    else:
        assert len(warnings) <= 2, shown
    assert witness.posts_while_another_ran() == [], text
    assert witness.overlapping_agent_migrations() == [], text
    if endpoint.fact and kind in UNREADABLE:
        during = [p for p in witness.agent_posts() if t0 <= p.time < t1]
        assert during == [], f"migrated while {endpoint.path} could not be read\n{text}"
    if not (endpoint.name == "migrate" and kind in FAILED_START):
        # (a guest whose start failed is in cooldown for longer than this run)
        node = lab.sim.node("pve1")
        assert node.live_mem / node.memory <= 0.8, text


def test_the_matrix_covers_every_kind_and_endpoint() -> None:
    from pvesim.faults import KINDS as SIM_KINDS

    assert sorted(KINDS) == sorted(SIM_KINDS)
    assert len(CASES) == len(ENDPOINTS) * len(SIM_KINDS)


def test_missing_tags_never_move_an_excluded_guest() -> None:
    """Every guest pve1 could give up carries the exclusion tag (the
    database is too big to move): with `tags` dropped from
    /cluster/resources, nothing may move."""
    doc = yaml.safe_load(scenario_path("lab-three-agents").read_text(encoding="utf-8"))
    excluded = set()
    for guest in doc["guests"]:
        if guest["node"] == "pve1" and guest["vmid"] != 107:
            guest["tags"] = [Config().exclude_tag]
            excluded.add(guest["vmid"])
    lab = make_lab(doc, Config(seed=1, interval=5), warmup=WARMUP, faults=True)
    assert lab.faults is not None
    lab.run(120.0)
    assert lab.migrate_posts() == [], "moved an excluded guest with its tags readable"
    lab.faults.add(kind="missing_fields", method="GET", path="/cluster/resources",
                   fields=("tags",))
    lab.run(EPISODE)
    moved = {int(p.path.split("/")[4]) for p in lab.migrate_posts()}
    assert not moved & excluded, f"moved excluded guests {sorted(moved & excluded)}"
