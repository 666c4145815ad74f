"""Three real `pve-balancer run` processes against `python -m pvesim serve
--pmxcfs`: one leads, the others stand by, and leadership moves exactly as
pmxcfs allows.

Each agent runs on its own simulated node with `--pve-root` on that node's
FUSE mount of the pmxcfs emulator and `--api-url` on that node's HTTPS API.
The verdicts come from three independent records (see `lab.py`): the
agents' own time-stamped lines, the simulator's request log (`served_by` =
the node whose API got the request; an agent only ever talks to its own
node's API) and the emulator's lock status.

Fast cases shorten the lock lifetime to 10 s with the agents' election
timing scaled by the lab-only options (renew 2 s, safety bound 5 s, retry
2 s; the agent cycle is 2 s); the slow case uses pmxcfs's 120 s lifetime
and the production timing (renew 10 s, safety 60 s, retry 5 s, cycle 5 s).

Bounds and why:
- orderly stop: a standby leads within 10 s of SIGTERM (PMXCFS.md target);
- crash: a standby leads no earlier than the lifetime after the last renew
  and no later than lifetime + 1 s (pmxcfs counts whole seconds: deletable
  from lifetime + 1) + one effective retry interval (a standby tries once
  per cycle, so max(retry, interval)) + `SLACK` for a cycle's own work and
  process scheduling on a loaded machine;
- quorum loss: the leader stops within one cycle (interval + `SLACK`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lab import FAST, REAL, Agent, ProcessLab, Timing, wait_for, write_scenario

pytestmark = pytest.mark.fuse

INTERVAL = 2.0  # balancer_config.interval of the lab scenario
SLACK = 1.5
HOTSPOT_AT = 120.0  # the lab scenario's memory step on pve1
MEMORY_MAX = 0.8

MEASURED: dict[str, float] = {}


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[list[ProcessLab]]:
    """Labs started by a test; stopped (agents, simulator, mounts) at teardown."""
    started: list[ProcessLab] = []
    yield started
    for lab in started:
        lab.stop()
    if MEASURED:
        print("measured (s):", {k: round(v, 2) for k, v in MEASURED.items()})


def _start(labs: list[ProcessLab], tmp_path: Path, timing: Timing = FAST, speed: float = 1.0,
           balancer_config: dict[str, Any] | None = None) -> ProcessLab:
    scenario = write_scenario(tmp_path, balancer_config=balancer_config)
    lab = ProcessLab.start(tmp_path / "lab", scenario, timing, speed=speed)
    labs.append(lab)
    return lab


def _leader_then_standbys(lab: ProcessLab, first: str,
                          timing: Timing | None = None) -> tuple[Agent, list[Agent]]:
    """Start `first` alone and let it lead, then the other two; wait until
    both say they stand by."""
    leader = lab.start_agent(first, timing)
    lab.wait_leader(30)
    assert leader.leading(), lab.report()
    others = [lab.start_agent(n, timing) for n in lab.nodes if n != first]
    for agent in others:
        wait_for(f"{agent.node} to stand by",
                 lambda a=agent: any("standby" in x.text for x in a.snapshot()), 30)
    return leader, others


def _last_renew(lab: ProcessLab, node: str) -> float:
    """Wall time of the lock's last create/renew, from the emulator, once
    `node`'s writes have stopped (killed or cut off)."""
    time.sleep(0.3)  # a syscall in flight at the kill is done by now
    before = time.time()
    lock = lab.lock_status()
    after = time.time()
    assert lock is not None, "the lock is gone"
    assert lock["writer"] == node, lock
    return (before + after) / 2 - float(lock["age"])


# ---------------------------------------------------------------- steady run

def _steady_run(labs: list[ProcessLab], tmp_path: Path, speed: float, sim_seconds: float) -> None:
    lab = _start(labs, tmp_path, speed=speed)
    agents = [lab.start_agent(n) for n in lab.nodes]  # all at once: they race for the lock
    leader = lab.wait_leader(30)
    t0_sim = lab.start_time
    seen_two = []
    while lab.sim_now() - t0_sim < sim_seconds:
        claiming = [a.node for a in agents if a.leading()]
        if len(claiming) > 1:
            seen_two.append(claiming)
        assert all(a.alive for a in agents), lab.report()
        time.sleep(0.5)
    report = lab.report()
    assert not seen_two, f"two agents claimed leadership at once: {seen_two}\n{report}"
    assert lab.overlaps() == [], report
    leaders_ever = {a.node for a in agents if any(e.leader for e in a.events())}
    assert leaders_ever == {leader.node}, report
    assert [a.node for a in agents if a.leading()] == [leader.node], report

    # Only the leader touched the API; standbys never did.
    requests = [e for e in lab.requests() if e["token_id"] == lab.conn["token_id"]]
    assert {e["served_by"] for e in requests} == {leader.node}, report
    posts = lab.migrate_posts()
    assert posts, f"no migration was started\n{report}"
    assert {p["served_by"] for p in posts} == {leader.node}, posts
    assert all(p["status"] == 200 for p in posts), posts
    assert all(p["time"] >= t0_sim + HOTSPOT_AT for p in posts), "moved before the hotspot"

    # The hotspot appeared and was relieved, by the leader's migration(s).
    metrics = lab.ctl.metrics()
    episodes = metrics["threshold_episodes"]["memory"]
    assert episodes["count"] >= 1 and episodes["still_open"] == [], episodes
    moves = metrics["migrations"]["list"]
    # The scenario needs exactly one move; a second actor would show here.
    assert len(moves) == 1 and all(m["ok"] and m["source"] == "pve1" and
                         m["user"] == lab.conn["token_id"] for m in moves), moves
    assert lab.node_memory()["pve1"] <= MEMORY_MAX
    MEASURED[f"hotspot relieved after (sim s, speed {speed:g})"] = episodes["max_seconds"]
    assert any("migrated vm" in x.text for x in leader.snapshot()), report


def test_three_agents_one_leader_relieves_the_hotspot(labs: list[ProcessLab],
                                                      tmp_path: Path) -> None:
    """Four simulated minutes at 6x: one leader, every request and every
    migration from it, the t=120 s hotspot relieved."""
    _steady_run(labs, tmp_path, speed=6.0, sim_seconds=240.0)


@pytest.mark.slow
def test_three_agents_ten_minutes_one_leader(labs: list[ProcessLab], tmp_path: Path) -> None:
    """The same over ten simulated minutes at 2x (five minutes of wall time)."""
    _steady_run(labs, tmp_path, speed=2.0, sim_seconds=600.0)


# ------------------------------------------------------------------ failover

def test_sigterm_to_the_leader_a_standby_leads_within_10_s(labs: list[ProcessLab],
                                                          tmp_path: Path) -> None:
    lab = _start(labs, tmp_path)
    leader, standbys = _leader_then_standbys(lab, "pve1")
    t_term = leader.signal(signal.SIGTERM)
    assert leader.wait(30) == 0, lab.report()
    new = wait_for("a standby to lead",
                   lambda: next(filter(None, (a.became_leader_after(t_term) for a in standbys)),
                                None), 15)
    took = new.t - t_term
    MEASURED["SIGTERM -> new leader"] = took
    report = lab.report()
    assert took <= 10.0, report
    # The lock was released by rmdir, not left to expire.
    assert "(lock acquired)" in new.text, report
    assert lab.overlaps() == [], report
    assert len([a for a in standbys if a.leading()]) == 1, report


def test_sigkill_to_the_leader_takeover_after_lifetime_plus_one_retry(labs: list[ProcessLab],
                                                                     tmp_path: Path) -> None:
    _crash_takeover(labs, tmp_path, FAST)


@pytest.mark.slow
def test_sigkill_real_120_s_lifetime_production_timing(labs: list[ProcessLab],
                                                       tmp_path: Path) -> None:
    _crash_takeover(labs, tmp_path, REAL, interval=5.0)


def _crash_takeover(labs: list[ProcessLab], tmp_path: Path, timing: Timing,
                    interval: float = INTERVAL) -> None:
    lab = _start(labs, tmp_path, timing, balancer_config={"interval": interval})
    leader, standbys = _leader_then_standbys(lab, "pve1")
    wait_for("pve1 to renew the lock",
             lambda: (lock := lab.lock_status()) is not None and lock["writer"] == "pve1", 30)
    t_kill = leader.signal(signal.SIGKILL)
    leader.wait(10)
    last_renew = _last_renew(lab, "pve1")
    new = wait_for("a standby to lead",
                   lambda: next(filter(None, (a.became_leader_after(t_kill) for a in standbys)),
                                None), timing.lifetime + 30)
    after_renew = new.t - last_renew
    retry = max(timing.retry, interval)
    MEASURED[f"SIGKILL (lifetime {timing.lifetime} s): new leader after last renew"] = after_renew
    MEASURED[f"SIGKILL (lifetime {timing.lifetime} s): new leader after kill"] = new.t - t_kill
    report = lab.report() + f"\nlast renew {last_renew:.3f}, kill {t_kill:.3f}"
    assert after_renew >= timing.lifetime, f"took over before the lock expired\n{report}"
    assert after_renew <= timing.lifetime + 1 + retry + SLACK, report
    assert "after it expired" in new.text, report
    assert lab.overlaps() == [], report
    lock = lab.lock_status()
    assert lock is not None and lock["writer"] == next(a.node for a in standbys
                                                       if a.leading()), lock


def test_leader_restarted_on_its_node_resumes_at_once(labs: list[ProcessLab],
                                                      tmp_path: Path) -> None:
    # A lifetime long enough that "before expiry" does not hinge on how fast
    # a Python process starts on a loaded machine.
    timing = Timing(lifetime=30, renew=2.0, safety=10.0, retry=2.0)
    lab = _start(labs, tmp_path, timing)
    leader, standbys = _leader_then_standbys(lab, "pve1")
    t_kill = leader.signal(signal.SIGKILL)
    leader.wait(10)
    last_renew = _last_renew(lab, "pve1")
    t_restart = time.time()
    again = lab.start_agent("pve1")
    resumed = wait_for("the restarted agent to lead", lambda: again.became_leader_after(0), 20)
    report = lab.report()
    assert "resumed the lock this node holds" in resumed.text, report
    assert resumed.t - last_renew < timing.lifetime, "waited for expiry"
    MEASURED["restart -> leading again"] = resumed.t - t_restart
    assert not any(a.became_leader_after(t_kill) for a in standbys), report
    assert lab.overlaps() == [], report


# -------------------------------------------------------------- quorum loss

def test_leader_losing_quorum_stops_and_a_quorate_node_takes_over(labs: list[ProcessLab],
                                                                  tmp_path: Path) -> None:
    """pve3 leads and is cut off (`--isolated-api local`: its agent still
    reaches its own API, its pmxcfs mount loses quorum). It stops within one
    cycle, posts nothing more, and pve1 or pve2 takes over once the lock
    expires, then relieves the hotspot on pve1."""
    lab = _start(labs, tmp_path)
    leader, standbys = _leader_then_standbys(lab, "pve3")
    t_cut_sim = lab.sim_now()
    t_cut = time.time()
    lab.ctl.network("pve3", up=False)

    def stepped_down() -> Any:
        return next((e for e in leader.events() if not e.leader and e.t >= t_cut), None)

    down = wait_for("pve3 to step down", stepped_down, 10)
    MEASURED["quorum lost -> leader stopped"] = down.t - t_cut
    report = lab.report()
    assert "quorum" in down.text, report
    assert down.t - t_cut <= INTERVAL + SLACK, report
    last_renew = _last_renew(lab, "pve3")

    new = wait_for("a quorate node to lead",
                   lambda: next(filter(None, (a.became_leader_after(t_cut) for a in standbys)),
                                None), FAST.lifetime + 30)
    report = lab.report()
    assert new.t - last_renew >= FAST.lifetime, report
    assert new.t - last_renew <= FAST.lifetime + 1 + max(FAST.retry, INTERVAL) + SLACK, report
    assert not leader.leading(), report
    # The cut-off node's API heard nothing from its agent after one cycle.
    late = [e for e in lab.requests() if e["served_by"] == "pve3"
            and e["token_id"] == lab.conn["token_id"] and e["time"] > t_cut_sim + INTERVAL + SLACK]
    assert late == [], late

    # The hotspot arrives now; the new leader relieves it; pve3 stays silent.
    lab.ctl.advance(lab.start_time + HOTSPOT_AT + 1 - lab.sim_now())
    new_agent = next(a for a in standbys if a.leading())
    wait_for("the new leader to migrate",
             lambda: any(m["end"] is not None and m["ok"] for m in lab.migrations()), 60)
    posts = lab.migrate_posts()
    assert posts and {p["served_by"] for p in posts} == {new_agent.node}, posts
    assert not [p for p in posts if p["served_by"] == "pve3" and p["time"] >= t_cut_sim]
    assert lab.overlaps() == [], lab.report()
    assert leader.alive, "the minority agent keeps running, as standby"
