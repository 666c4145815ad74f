"""Three real `pve-balancer run` processes against `python -m pvesim serve
--pmxcfs`: one leads, the others stand by, and leadership moves exactly as
pmxcfs allows.

Each agent runs on its own simulated node with `--pve-root` on that node's
FUSE mount of the pmxcfs emulator and `--api-url` on that node's HTTPS API.
The verdicts come from three independent records (see `lab.py`): the
agents' own time-stamped lines, the simulator's request log (`served_by` =
the node whose API got the request; an agent only ever talks to its own
node's API) and the emulator's lock status.

Every case runs on both file systems (`fs`): the pmxcfs emulator, and the
real pmxcfs on a three-node corosync cluster in namespaces
(`tests/real_pmxcfs`, slow tier). On the emulator the lock lifetime is
shortened to 10 s with the agents' election timing scaled by the lab-only
options (renew 2 s, safety bound 5 s, retry 2 s; the agent cycle is 2 s);
the real pmxcfs has its fixed 120 s, so there the agents run the
production timing (renew 10 s, safety 60 s, retry 5 s, cycle 5 s). The
emulator's slow cases add the 120 s lifetime and a ten-minute run.

Bounds and why:
- orderly stop: a standby leads within 10 s of SIGTERM (PMXCFS.md target);
- crash: a standby leads no earlier than the lifetime after the last renew
  and no later than lifetime + 1 s (pmxcfs counts whole seconds: deletable
  from lifetime + 1) + one effective retry interval (a standby tries once
  per cycle, so max(retry, interval)) + `SLACK` for a cycle's own work and
  process scheduling on a loaded machine;
- quorum loss: the leader stops within one cycle (interval + `SLACK`) of
  its node knowing: at once on the emulator; on the real pmxcfs `.members`
  says so about 8 s after the cut, and a write in that time blocks about
  as long (`notice`);
- pmxcfs stopped: the leader stops within one cycle plus the election's
  read deadline (`read_deadline`): a pmxcfs that is shutting down holds
  requests until it has unmounted (up to ~10 s on the real one), and the
  election gives up on such a read after the deadline.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pve_balancer.election import READ_DEADLINE
from tests.integration.lab import FAST, REAL, Agent, ProcessLab, Timing, wait_for, write_scenario

pytestmark = pytest.mark.fuse

INTERVAL = 2.0  # balancer_config.interval of the lab scenario
SLACK = 1.5
HOTSPOT_AT = 120.0  # the lab scenario's memory step on pve1
MEMORY_MAX = 0.8

MEASURED: dict[str, float] = {}


@dataclass(frozen=True)
class Fs:
    """One file system under the agents, with the timing it allows."""

    name: str
    timing: Timing
    interval: float  # agent cycle for the failover cases
    notice: float  # how long a cut node may take to know it is cut (see the docstring)

    @property
    def read_deadline(self) -> float:
        """The election's bound on one read of /etc/pve at this timing."""
        return min(READ_DEADLINE, self.timing.safety / 4)


EMULATOR = Fs("emulator", FAST, INTERVAL, 0.0)
REAL_PMXCFS = Fs("real", REAL, 5.0, 10.0)


@pytest.fixture(params=[EMULATOR, pytest.param(REAL_PMXCFS, marks=pytest.mark.slow)],
                ids=lambda f: f.name)
def fs(request: pytest.FixtureRequest) -> Fs:
    return request.param  # type: ignore[no-any-return]


def _measured(fs: Fs, what: str, seconds: float) -> None:
    """A figure for docs/election.md; also appended as a JSON line to
    $PVE_BALANCER_MEASUREMENTS when set (to collect several runs)."""
    MEASURED[f"{fs.name}: {what}"] = seconds
    out = os.environ.get("PVE_BALANCER_MEASUREMENTS")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"fs": fs.name, "what": what, "s": round(seconds, 3),
                                 "t": time.time()}) + "\n")


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[list[ProcessLab]]:
    """Labs started by a test; stopped (agents, simulator, file system) at teardown."""
    started: list[ProcessLab] = []
    yield started
    for lab in started:
        lab.stop()
    if MEASURED:
        print("measured (s):", {k: round(v, 2) for k, v in MEASURED.items()})


def _start(labs: list[ProcessLab], tmp_path: Path, timing: Timing = FAST, speed: float = 1.0,
           balancer_config: dict[str, Any] | None = None, fs: str = "emulator") -> ProcessLab:
    scenario = write_scenario(tmp_path, balancer_config=balancer_config)
    lab = ProcessLab.start(tmp_path / "lab", scenario, timing, speed=speed, fs=fs)
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


# ---------------------------------------------------------------- steady run

def _steady_run(labs: list[ProcessLab], tmp_path: Path, speed: float, sim_seconds: float,
                fs: Fs = EMULATOR) -> None:
    lab = _start(labs, tmp_path, fs.timing, speed=speed, fs=fs.name)
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
    _measured(fs, f"hotspot relieved after (sim s, speed {speed:g})", episodes["max_seconds"])
    assert any("migrated vm" in x.text for x in leader.snapshot()), report


def test_three_agents_one_leader_relieves_the_hotspot(labs: list[ProcessLab], tmp_path: Path,
                                                      fs: Fs) -> None:
    """Four simulated minutes at 6x: one leader, every request and every
    migration from it, the t=120 s hotspot relieved."""
    _steady_run(labs, tmp_path, speed=6.0, sim_seconds=240.0, fs=fs)


@pytest.mark.slow
def test_three_agents_ten_minutes_one_leader(labs: list[ProcessLab], tmp_path: Path) -> None:
    """The same over ten simulated minutes at 2x (five minutes of wall time)."""
    _steady_run(labs, tmp_path, speed=2.0, sim_seconds=600.0)


# ------------------------------------------------------------------ failover

def test_sigterm_to_the_leader_a_standby_leads_within_10_s(labs: list[ProcessLab], tmp_path: Path,
                                                          fs: Fs) -> None:
    lab = _start(labs, tmp_path, fs.timing, balancer_config={"interval": fs.interval},
                 fs=fs.name)
    leader, standbys = _leader_then_standbys(lab, "pve1")
    t_term = leader.signal(signal.SIGTERM)
    assert leader.wait(30) == 0, lab.report()
    new = wait_for("a standby to lead",
                   lambda: next(filter(None, (a.became_leader_after(t_term) for a in standbys)),
                                None), 15)
    took = new.t - t_term
    _measured(fs, "SIGTERM -> new leader", took)
    report = lab.report()
    assert took <= 10.0, report
    # The lock was released by rmdir, not left to expire.
    assert "(lock acquired)" in new.text, report
    assert lab.overlaps() == [], report
    assert len([a for a in standbys if a.leading()]) == 1, report


def test_sigkill_to_the_leader_takeover_after_lifetime_plus_one_retry(labs: list[ProcessLab],
                                                                     tmp_path: Path,
                                                                     fs: Fs) -> None:
    _crash_takeover(labs, tmp_path, fs.timing, fs.interval, fs)


@pytest.mark.slow
def test_sigkill_real_120_s_lifetime_production_timing(labs: list[ProcessLab],
                                                       tmp_path: Path) -> None:
    """The emulator with pmxcfs's own lifetime and the production timing."""
    _crash_takeover(labs, tmp_path, REAL, 5.0, Fs("emulator-120s", REAL, 5.0, 0.0))


def _crash_takeover(labs: list[ProcessLab], tmp_path: Path, timing: Timing, interval: float,
                    fs: Fs) -> None:
    lab = _start(labs, tmp_path, timing, balancer_config={"interval": interval},
                 fs="real" if fs.name == "real" else "emulator")
    leader, standbys = _leader_then_standbys(lab, "pve1")
    if lab.cluster is None:
        wait_for("pve1 to renew the lock",
                 lambda: (lock := lab.lock_status()) is not None and lock["writer"] == "pve1",
                 30)
    t_kill = leader.signal(signal.SIGKILL)
    leader.wait(10)
    last_renew = lab.last_renew("pve1")
    new = wait_for("a standby to lead",
                   lambda: next(filter(None, (a.became_leader_after(t_kill) for a in standbys)),
                                None), timing.lifetime + 30)
    after_renew = new.t - last_renew
    retry = max(timing.retry, interval)
    _measured(fs, f"SIGKILL (lifetime {timing.lifetime} s): new leader after last renew",
              after_renew)
    _measured(fs, f"SIGKILL (lifetime {timing.lifetime} s): new leader after kill",
              new.t - t_kill)
    report = lab.report() + f"\nlast renew {last_renew:.3f}, kill {t_kill:.3f}"
    assert after_renew >= timing.lifetime, f"took over before the lock expired\n{report}"
    assert after_renew <= timing.lifetime + 1 + retry + SLACK, report
    if lab.cluster is None:
        assert "after it expired" in new.text, report
    else:
        # On the real pmxcfs the deletion is a second message round: under
        # load it can land after every standby's retries, and the next
        # plain mkdir (of any standby) takes the lock. Either way the timing
        # above says it was taken only once it had expired.
        assert new.text.startswith(("became leader (lock acquired after it expired)",
                                    "became leader (lock acquired)")), report
    assert lab.overlaps() == [], report
    if lab.cluster is None:
        lock = lab.lock_status()
        assert lock is not None and lock["writer"] == next(a.node for a in standbys
                                                           if a.leading()), lock


def test_leader_restarted_on_its_node_resumes_at_once(labs: list[ProcessLab], tmp_path: Path,
                                                      fs: Fs) -> None:
    # A lifetime long enough that "before expiry" does not hinge on how fast
    # a Python process starts on a loaded machine.
    timing = Timing(lifetime=30, renew=2.0, safety=10.0, retry=2.0) \
        if fs.name == "emulator" else fs.timing
    lab = _start(labs, tmp_path, timing, fs=fs.name)
    leader, standbys = _leader_then_standbys(lab, "pve1")
    t_kill = leader.signal(signal.SIGKILL)
    leader.wait(10)
    last_renew = lab.last_renew("pve1")
    t_restart = time.time()
    again = lab.start_agent("pve1")
    resumed = wait_for("the restarted agent to lead", lambda: again.became_leader_after(0), 20)
    report = lab.report()
    assert "resumed the lock this node holds" in resumed.text, report
    assert resumed.t - last_renew < timing.lifetime, "waited for expiry"
    _measured(fs, "restart -> leading again", resumed.t - t_restart)
    assert not any(a.became_leader_after(t_kill) for a in standbys), report
    assert lab.overlaps() == [], report


# -------------------------------------------------------------- quorum loss

def test_leader_losing_quorum_stops_and_a_quorate_node_takes_over(labs: list[ProcessLab],
                                                                  tmp_path: Path,
                                                                  fs: Fs) -> None:
    """pve3 leads and is cut off (`--isolated-api local`: its agent still
    reaches its own API, its pmxcfs loses quorum). It stops within one
    cycle of knowing, posts nothing more, and pve1 or pve2 takes over once
    the lock expires, then relieves the hotspot on pve1."""
    timing = fs.timing
    lab = _start(labs, tmp_path, timing, balancer_config={"interval": fs.interval},
                 fs=fs.name)
    leader, standbys = _leader_then_standbys(lab, "pve3")
    t_cut_sim = lab.sim_now()
    t_cut = time.time()
    lab.cut("pve3")

    def stepped_down() -> Any:
        return next((e for e in leader.events() if not e.leader and e.t >= t_cut), None)

    down = wait_for("pve3 to step down", stepped_down, fs.notice + fs.interval + 10)
    _measured(fs, "cut -> leader stopped", down.t - t_cut)
    report = lab.report()
    # .members said so, or a write refused it (EACCES; EPERM on the real
    # pmxcfs for the first write after the membership change)
    assert "quorum" in down.text or "renew failed" in down.text, report
    assert down.t - t_cut <= fs.notice + fs.interval + SLACK, report
    last_renew = lab.last_renew("pve3")

    new = wait_for("a quorate node to lead",
                   lambda: next(filter(None, (a.became_leader_after(t_cut) for a in standbys)),
                                None), timing.lifetime + 30)
    report = lab.report()
    _measured(fs, "cut: new leader after last renew", new.t - last_renew)
    assert new.t - last_renew >= timing.lifetime, report
    assert new.t - last_renew <= timing.lifetime + 1 + max(timing.retry, fs.interval) + SLACK, \
        report
    assert not leader.leading(), report
    # The cut-off node's API heard nothing from its agent once it stepped
    # down (sim time runs at speed 1 from the cut; 0.5 s for a request the
    # step-down cycle had in flight).
    t_down_sim = t_cut_sim + (down.t - t_cut)
    late = [e for e in lab.requests() if e["served_by"] == "pve3"
            and e["token_id"] == lab.conn["token_id"] and e["time"] > t_down_sim + 0.5]
    assert late == [], late

    # The hotspot arrives now; the new leader relieves it; pve3 stays silent.
    # (with the 120 s lifetime the simulated clock may be past the hotspot already)
    lab.ctl.advance(max(0.0, lab.start_time + HOTSPOT_AT + 1 - lab.sim_now()))
    new_agent = next(a for a in standbys if a.leading())
    wait_for("the new leader to migrate",
             lambda: any(m["end"] is not None and m["ok"] for m in lab.migrations()), 60)
    posts = lab.migrate_posts()
    assert posts and {p["served_by"] for p in posts} == {new_agent.node}, posts
    assert not [p for p in posts if p["served_by"] == "pve3" and p["time"] >= t_cut_sim]
    assert lab.overlaps() == [], lab.report()
    assert leader.alive, "the minority agent keeps running, as standby"


# ------------------------------------------------------------ pmxcfs restart

def test_pmxcfs_restarted_under_the_leader(labs: list[ProcessLab], tmp_path: Path, fs: Fs) -> None:
    """pve1 leads; its pmxcfs stops (its /etc/pve is an empty directory) and
    starts again 3 cycles later. Meanwhile its agent says once that it
    cannot read /etc/pve, sends no API request and no other node leads (the
    lock has not expired); once pmxcfs is back the agent resumes the lock
    its node still holds."""
    lab = _start(labs, tmp_path, fs.timing, balancer_config={"interval": fs.interval},
                 fs=fs.name)
    leader, standbys = _leader_then_standbys(lab, "pve1")
    time.sleep(fs.interval)
    t_stop_sim, t_stop = lab.sim_now(), time.time()
    lab.stop_pmxcfs("pve1")
    # A pmxcfs that is shutting down holds file system requests until it has
    # unmounted (seen: up to ~11.5 s on the real one); the cycle's first
    # read (the configuration's stat) gives up after the read deadline, and
    # the election, which shares its worker, steps down at once.
    bound = fs.interval + fs.read_deadline + SLACK
    down = wait_for("pve1 to stop leading",
                    lambda: next((e for e in leader.events() if not e.leader and e.t >= t_stop),
                                 None), bound + 15)
    _measured(fs, "pmxcfs stopped -> leader stopped", down.t - t_stop)
    time.sleep(3 * fs.interval)
    t_start_sim, t_start = lab.sim_now(), time.time()
    lab.start_pmxcfs("pve1")
    again = wait_for("pve1 to lead again", lambda: leader.became_leader_after(t_start),
                     3 * fs.interval + 10)
    _measured(fs, "pmxcfs back -> leading again", again.t - t_start)
    print("pve1 around the stop:", [(round(x.t - t_stop, 2), x.text[:100])
                                    for x in leader.snapshot() if t_stop <= x.t <= t_start + 1])
    report = lab.report()
    assert "resumed the lock this node holds" in again.text, report
    assert down.t - t_stop <= bound, report
    assert not any(a.became_leader_after(t_stop) for a in standbys), report
    assert lab.overlaps() == [], report
    while_down = [x.text for x in leader.snapshot() if t_stop <= x.t < t_start]
    assert not [t for t in while_down if "cycle failed" in t], report
    # The election says each once: that pmxcfs held a call (if it did) and
    # that the tree is gone. (The configuration source has its own line.)
    assert len([t for t in while_down if "is pmxcfs running?" in t]) == 1, report
    assert len([t for t in while_down if "pmxcfs does not answer" in t]) <= 1, report
    t_down_sim = t_stop_sim + (down.t - t_stop)
    silent = [e for e in lab.requests() if e["served_by"] == "pve1"
              and e["token_id"] == lab.conn["token_id"]
              and t_down_sim + 0.5 < e["time"] < t_start_sim]
    assert silent == [], silent


@pytest.mark.slow
def test_pmxcfs_hung_under_the_leader_real(labs: list[ProcessLab], tmp_path: Path) -> None:
    """pve1 leads on the real pmxcfs; its pmxcfs is frozen (SIGSTOP: every
    request on its mount waits, as while a pmxcfs stops or hangs) for three
    cycles. The cycle's first read gives up after the read deadline, the
    leader steps down at once and says once that pmxcfs does not answer,
    sends no API request, and no other node leads (the lock has not
    expired); once pmxcfs runs again the same agent resumes its lock."""
    fs = REAL_PMXCFS
    lab = _start(labs, tmp_path, fs.timing, balancer_config={"interval": fs.interval},
                 fs=fs.name)
    assert lab.cluster is not None
    leader, standbys = _leader_then_standbys(lab, "pve1")
    time.sleep(fs.interval)
    pmxcfs = lab.cluster.nodes["pve1"].pmxcfs
    assert pmxcfs is not None
    t_freeze_sim, t_freeze = lab.sim_now(), time.time()
    pmxcfs.send_signal(signal.SIGSTOP)
    try:
        bound = fs.interval + fs.read_deadline + SLACK
        down = wait_for("pve1 to stop leading",
                        lambda: next((e for e in leader.events()
                                      if not e.leader and e.t >= t_freeze), None), bound + 15)
        _measured(fs, "pmxcfs frozen -> leader stopped", down.t - t_freeze)
        time.sleep(3 * fs.interval)
    finally:
        t_thaw_sim, t_thaw = lab.sim_now(), time.time()
        pmxcfs.send_signal(signal.SIGCONT)
    again = wait_for("pve1 to lead again", lambda: leader.became_leader_after(t_thaw),
                     3 * fs.interval + 10)
    _measured(fs, "pmxcfs running again -> leading again", again.t - t_thaw)
    report = lab.report()
    assert "pmxcfs does not answer" in down.text, report
    assert down.t - t_freeze <= bound, report
    assert "resumed the lock this node holds" in again.text, report
    assert not any(a.became_leader_after(t_freeze) for a in standbys), report
    assert lab.overlaps() == [], report
    while_frozen = [x.text for x in leader.snapshot() if t_freeze <= x.t < t_thaw]
    assert len([t for t in while_frozen if "pmxcfs does not answer" in t]) == 1, report
    assert not [t for t in while_frozen if "cycle failed" in t], report
    t_down_sim = t_freeze_sim + (down.t - t_freeze)
    silent = [e for e in lab.requests() if e["served_by"] == "pve1"
              and e["token_id"] == lab.conn["token_id"]
              and t_down_sim + 0.5 < e["time"] < t_thaw_sim]
    assert silent == [], silent
