"""Fail closed: the agent does not migrate on facts it could not read.

Each test puts the real agent (the real `PveClient`, its requests served
in-process by pvesim) in a cluster where migrating would be wrong unless a
fact is known, makes that fact's endpoint fail with pvesim's fault
injection, and judges by the simulator's request log what was POSTed, and
by the cycles' sentences what the operator was told.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pve_balancer.agent import Agent
from pve_balancer.config import Config, ConfigSource
from pve_balancer.env import PveEnvironment
from pve_balancer.leadership import AlwaysLeader
from pve_balancer.pve import FRESH_FOR, SLOW_FACTS, PveError
from pvesim.clock import VirtualClock
from simlab.inprocess import InProcessLab as Lab
from simlab.inprocess import attach_client, make_lab
from tests.conftest import guest_spec, nodes_spec
from tests.unit.https_sim import https_sim

from .test_agent_cycle import memory_hot
from .test_journal import run_agent

EXCLUDE = "pve-balancer-exclude"


def hot_with_one_target(**node_extra: Any) -> dict[str, Any]:
    """pve1 at ~85 % memory (VMs 101-105, 10 GiB each), pve2 the only other
    node (`node_extra` applies to it)."""
    scenario = memory_hot()
    scenario["nodes"][1].update(node_extra)
    return scenario


def lab_of(scenario: dict[str, Any], config: Config | None = None) -> Lab:
    return make_lab(scenario, config or Config(seed=3), faults=True)


def fail_endpoint(lab: Lab, path: str) -> None:
    """Every GET of `path` answers HTTP 500 from now on."""
    assert lab.faults is not None
    lab.faults.add(kind="http_error", method="GET", path=path, status=500,
                   message="cannot read cluster file")


def journal(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    """What the daemon wrote to the journal at `level` or above."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= level and r.name.startswith("pve_balancer")]


# -- at a term start, a fact that cannot be read holds every decision --------


def test_unreadable_backup_jobs_at_a_term_start_hold_back_inside_the_guard() -> None:
    # The agent starts at 00:02; a backup job starts at 00:03, inside the
    # 120 s backup guard. Its schedule cannot be read.
    scenario = hot_with_one_target()
    scenario["backup_jobs"] = [{"id": "nightly", "schedule": "00:03", "vmids": [201],
                                "seconds_per_guest": 60}]
    lab = lab_of(scenario)
    fail_endpoint(lab, "/cluster/backup")
    lab.run(90)
    assert lab.migrate_posts() == [], "no migration without knowing when the backup starts"
    held = [s for _, s in lab.sentences if "not deciding without backup jobs" in s]
    assert held and "HTTP 500" in held[0], lab.sentences[:6]


def test_unreadable_ha_status_at_a_term_start_never_targets_a_node_in_maintenance() -> None:
    lab = lab_of(hot_with_one_target(maintenance=True))
    fail_endpoint(lab, "/cluster/ha/status/manager_status")
    lab.run(180)
    assert lab.migrate_posts() == [], "pve2 is in maintenance: nothing may go there"
    assert any("not deciding without HA manager status" in s for _, s in lab.sentences)


def test_unreadable_ha_rules_at_a_term_start_never_move_a_pinned_guest() -> None:
    scenario = memory_hot()
    # Not strict: PVE itself would allow the move (and HA would move the
    # guest back), only the rule says the guests belong on pve1.
    scenario["ha_rules"] = [{"rule": "stay", "type": "node-affinity", "strict": False,
                             "resources": [f"vm:{v}" for v in range(101, 106)],
                             "nodes": ["pve1"]}]
    for g in scenario["guests"]:
        g["ha"] = True
    lab = lab_of(scenario)
    fail_endpoint(lab, "/cluster/ha/rules")
    lab.run(180)
    assert lab.migrate_posts() == [], "every guest of pve1 is pinned to it by an HA rule"
    assert any("not deciding without HA rules" in s for _, s in lab.sentences)


@pytest.mark.parametrize("fact", SLOW_FACTS, ids=[f.key for f in SLOW_FACTS])
def test_each_unreadable_slow_fact_is_one_warning_and_no_post(
        fact: Any, caplog: pytest.LogCaptureFixture) -> None:
    lab = lab_of(memory_hot())
    fail_endpoint(lab, "/" + "/".join(fact.path))
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        lab.run(300)
        assert lab.migrate_posts() == []
        warnings = journal(caplog)
        assert len(warnings) == 1, warnings
    assert f"no action: not deciding without {fact.label} (not read yet: GET /" in warnings[0]
    assert "HTTP 500" in warnings[0], "the cause is named"
    # once readable again, the agent decides and relieves pve1
    assert lab.faults is not None
    lab.faults.clear()
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        lab.run(120)
    assert lab.migrate_posts(), "pve1 relieved once the fact is read"
    ends = [m for m in journal(caplog, logging.INFO) if m.startswith("resolved after")]
    assert len(ends) == 1 and f"not deciding without {fact.label}" in ends[0], ends


def test_a_fact_that_stops_being_readable_holds_back_after_two_refreshes() -> None:
    lab = lab_of(memory_hot(), Config(seed=3, dry_run=True))
    lab.run(30)
    assert any(s.startswith("dry run, not started") for _, s in lab.sentences[-2:])
    broke = lab.sim.now
    fail_endpoint(lab, "/cluster/backup")
    lab.run(FRESH_FOR + 30)
    during = [(t - broke, s) for t, s in lab.sentences if t >= broke]
    decided = [t for t, s in during if s.startswith("dry run, not started")]
    held = [t for t, s in during if "not deciding without backup jobs (last read" in s]
    assert decided and held, during[::6]
    assert max(decided) < min(held), "decisions until the value is too old, none after"
    assert FRESH_FOR - 60 <= min(held) <= FRESH_FOR + 10, during[::6]


def test_online_node_without_statistics_is_not_a_target() -> None:
    lab = lab_of(memory_hot())
    assert lab.faults is not None
    lab.faults.add(kind="missing_fields", method="GET", path="/cluster/resources",
                   fields=("mem",))
    lab.run(120)
    assert lab.migrate_posts() == []
    assert any("statistics of node pve2" in s for _, s in lab.sentences)


# -- exclusion tags survive an answer without them ----------------------------


def excluded_hot() -> dict[str, Any]:
    """pve1 hot; every guest there carries the exclusion tag."""
    scenario = memory_hot()
    for g in scenario["guests"]:
        if g["node"] == "pve1":
            g["tags"] = [EXCLUDE]
    return scenario


def test_missing_tags_field_is_checked_in_the_guest_config() -> None:
    lab = lab_of(excluded_hot())
    assert lab.faults is not None
    lab.faults.add(kind="missing_fields", method="GET", path="/cluster/resources",
                   fields=("tags",))
    lab.run(120)
    assert lab.migrate_posts() == [], "every guest of pve1 is excluded by its tag"
    asked = {r.path for r in lab.requests("GET", "/config")}
    assert asked and all(p.startswith("/nodes/pve1/qemu/10") for p in asked), asked


def test_missing_tags_and_unreadable_config_hold_back() -> None:
    lab = lab_of(memory_hot())
    assert lab.faults is not None
    lab.faults.add(kind="missing_fields", method="GET", path="/cluster/resources",
                   fields=("tags",))
    fail_endpoint(lab, "/nodes/*/qemu/*/config")
    lab.run(60)
    assert lab.migrate_posts() == []
    assert any("gave no tags for it and its config could not be read" in s
               for _, s in lab.sentences)


def test_untagged_guests_still_move_after_one_config_read() -> None:
    scenario = memory_hot()
    scenario["guests"].append(guest_spec(301, "pve2", cpu=0.1, cores=2))
    scenario["nodes"] = nodes_spec(2)
    lab = lab_of(scenario)
    lab.run(30)
    assert len(lab.migrate_posts()) == 1
    assert len(lab.requests("GET", "/config")) == 1, "only the guest about to move"


# -- the slow facts are spread over cycles ------------------------------------


SLOW_PATHS = ["/" + "/".join(f.path) for f in SLOW_FACTS]


def slow_reads(lab: Lab, since: float) -> list[str]:
    """The slow endpoints that reached the simulator since `since`, in order."""
    return [r.path for r in lab.sim.request_log if r.time >= since and r.path in SLOW_PATHS]


def test_a_term_reads_one_slow_endpoint_per_cycle_then_refreshes_them_spread() -> None:
    lab = lab_of(memory_hot(), Config(seed=3, dry_run=True))
    start = lab.sim.now
    lab.run(20)
    assert slow_reads(lab, start) == SLOW_PATHS, "one per cycle, in order, none twice"
    lab.run(300)
    counts = {p: slow_reads(lab, start).count(p) for p in SLOW_PATHS}
    assert all(5 <= n <= 7 for n in counts.values()), counts  # every 60 s over 320 s
    per_cycle: dict[float, int] = {}
    for r in lab.sim.request_log:
        if r.path in SLOW_PATHS:
            per_cycle[r.time] = per_cycle.get(r.time, 0) + 1
    assert max(per_cycle.values()) == 1, "never two slow endpoints in one cycle"


def test_a_failing_slow_endpoint_does_not_starve_the_others() -> None:
    lab = lab_of(memory_hot(), Config(seed=3, dry_run=True))
    fail_endpoint(lab, "/cluster/ha/rules")
    start = lab.sim.now
    lab.run(20)
    # the failed read never reaches the simulator; the others do, one a cycle
    assert slow_reads(lab, start) == SLOW_PATHS[1:]
    missing, failed = lab.client.missing_facts(lab.sim.now)
    assert len(missing) == 1 and failed == missing and "HA rules" in failed[0]


def test_plan_reads_every_fact_in_its_one_sample() -> None:
    lab = lab_of(memory_hot())
    env = PveEnvironment(node="pve1", connect=lambda: attach_client(lab.sim, "pve1"),
                         election=AlwaysLeader(), clock=VirtualClock(lab.sim))
    plan = Agent(env, ConfigSource.fixed(Config(seed=1))).plan()
    assert plan.snapshot.missing == ()
    assert plan.decision.migration is not None, plan.decision.reason


# -- the same, as a real process ----------------------------------------------


def test_process_unreadable_ha_status_is_one_warning_and_no_post(tmp_path: Path) -> None:
    with https_sim(tmp_path, hot_with_one_target(maintenance=True),
                   config="interval: 2\n") as hs:
        hs.faults.add(kind="http_error", method="GET",
                      path="/cluster/ha/status/manager_status", status=500,
                      message="cannot read cluster file")
        proc = run_agent(hs, "--cycles", "8")
        _, err = proc.communicate(timeout=90)
        posts = [r for r in hs.sim.request_log if r.method == "POST"]
    assert proc.returncode == 0, err
    assert posts == [], "pve2 is in maintenance: nothing may go there"
    warnings = [x for x in err.splitlines() if " WARNING " in x or " ERROR " in x]
    assert len(warnings) == 1, warnings
    assert "not deciding without HA manager status (not read yet: GET " \
        "/cluster/ha/status/manager_status: HTTP 500 cannot read cluster file)" in warnings[0]


# -- an answer of the wrong shape is a failed read, not "nothing there" -----------


@pytest.mark.parametrize(("key", "answer"), [
    ("rules", {"rule": "x"}),          # an object where PVE sends a list
    ("options", ["crs"]),              # a list where PVE sends an object
    ("backup", "nightly"),
    ("manager", {"quorum": {"quorate": "1"}}),  # neither manager nor LRM status
])
def test_an_answer_of_the_wrong_shape_counts_as_not_read(key: str, answer: object) -> None:
    fact = next(f for f in SLOW_FACTS if f.key == key)
    with pytest.raises(PveError):
        fact.parse(answer, 0.0)


def test_answers_of_the_right_shape_are_read() -> None:
    parsed = {f.key: f.parse(answer, 0.0) for f, answer in zip(SLOW_FACTS, (
        [], {}, [], {"manager_status": {"node_status": {"pve2": "maintenance"}}}), strict=True)}
    assert parsed == {"rules": (), "options": False, "backup": (),
                      "manager": frozenset({"pve2"})}
