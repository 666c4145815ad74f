"""Agent.run_cycle around the policy, against a small simulated cluster.

Each test builds a pvesim cluster that puts the agent in one situation and
drives `run_cycle()` through the real `PveClient`, its requests served
in-process by the simulator (`make_lab`). What the agent did is judged by
what reached the API: the simulator's request log. A call that a fault rule
answers in PVE's place never reaches the simulator, so for those the rule's
`fired` count says how often it was made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pve_balancer.agent import Agent
from pve_balancer.config import Config, ConfigSource
from pve_balancer.env import PveEnvironment
from pve_balancer.leadership import AlwaysLeader, Election
from pve_balancer.pve import PveClient
from pvesim.clock import VirtualClock
from pvesim.faults import Fault
from pvesim.protocol import RequestRecord
from simlab.inprocess import AGENT_TOKEN, make_lab
from simlab.inprocess import InProcessLab as Lab
from tests.conftest import guest_spec, nodes_spec
from tests.term_start import first_decision

# -- situations -----------------------------------------------------------


def memory_hot(local_disk: Iterable[int] = ()) -> dict[str, Any]:
    """pve1 (64 GiB, 4 GiB for the host) at ~85 % memory: VMs 101-105 use
    all of their 10 GiB; pve2 holds one 4 GiB VM (~13 %). Moving any one of
    the five relieves pve1. VMs in `local_disk` have a disk on local-lvm,
    which PVE cannot migrate live."""
    unmovable = set(local_disk)
    guests = []
    for vmid in range(101, 106):
        extra: dict[str, Any] = {}
        if vmid in unmovable:
            extra["local_disks"] = [{"volid": f"local-lvm:vm-{vmid}-disk-0", "size": "32GiB"}]
        guests.append(guest_spec(vmid, "pve1", cpu=0.1, cores=2, mem="10GiB", memory="10GiB",
                                 **extra))
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "memory-hot", "nodes": nodes_spec(2), "guests": guests}


def cpu_hot() -> dict[str, Any]:
    """pve1 (16 cores) at 85 % CPU: VMs 101-104 (4 vCPUs each) busy 4.0,
    3.6, 3.2 and 2.8 cores; pve2 at 20 %. Moving 102 relieves pve1 and
    keeps the busiest VM (101) where it is."""
    guests = [guest_spec(101 + i, "pve1", cpu=c, cores=4) for i, c in
              enumerate((4.0, 3.6, 3.2, 2.8))]
    guests.append(guest_spec(201, "pve2", cpu=3.2, cores=4))
    return {"name": "cpu-hot", "nodes": nodes_spec(2), "guests": guests}


def lab_with(scenario: dict[str, Any], *, config: Config | None = None,
             election: Election | None = None) -> Lab:
    """The agent on pve1 of `scenario`, its API behind a fault injector
    (without rules until a test adds them)."""
    return make_lab(scenario, config or Config(seed=3), election=election, faults=True)


def vmid_of(record: RequestRecord) -> int:
    """The guest of a `/nodes/N/qemu/VMID/...` request."""
    return int(record.path.split("/")[4])


def refuse_migrations(lab: Lab, vmids: Iterable[int]) -> dict[int, Fault]:
    """PVE answers every migrate POST for these guests with a 500 (its
    answer when the guest's config lock cannot be taken in time). The call
    is not carried out; each rule's `fired` counts the POSTs it refused."""
    return {vmid: lab.faults.add(
        kind="http_error", method="POST", path=f"/nodes/pve1/qemu/{vmid}/migrate", status=500,
        message=f"can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout")
        for vmid in vmids}


# -- elections (second implementations of leadership.Election) -------------


class Standby:
    """Another node holds the lock."""

    def __init__(self) -> None:
        self.confirms = 0

    def tick(self, now: float) -> str | None:
        return None

    @property
    def is_leader(self) -> bool:
        return False

    def confirm(self, now: float) -> bool:
        self.confirms += 1
        return False

    def release(self) -> None:
        pass

    def describe(self) -> str:
        return "standby (leader: pve2)"


class LeaderThatCannotConfirm(Standby):
    """Led as of the last tick, but the re-check before a POST fails (the
    lock was lost in between, or pmxcfs cannot be read)."""

    @property
    def is_leader(self) -> bool:
        return True

    def describe(self) -> str:
        return "leader"


class Switchable:
    """An election whose outcome the test sets."""

    def __init__(self) -> None:
        self.leading = True
        self.was = False

    def tick(self, now: float) -> str | None:
        if self.leading != self.was:
            self.was = self.leading
            return "became leader" if self.leading else "lost the leader lock"
        return None

    @property
    def is_leader(self) -> bool:
        return self.leading

    def confirm(self, now: float) -> bool:
        return self.leading

    def release(self) -> None:
        self.leading = False

    def describe(self) -> str:
        return "leader" if self.leading else "standby (leader: pve2)"


# -- the cycle --------------------------------------------------------------


def test_standby_touches_no_api() -> None:
    lab = lab_with(memory_hot(), election=Standby())
    result = lab.agent.run_cycle()
    assert result.sentence == "standby (leader: pve2)"
    assert lab.sim.request_log == []
    assert result.fields["role"] == "standby"


def test_leader_starts_one_migration_then_follows_it() -> None:
    lab = lab_with(memory_hot())
    a = lab.agent
    opening = a.run_cycle()
    assert opening.sentence.startswith("leading as the only balancer (no election); no action: "
                                       "waiting for "
                                       "facts to be read: cluster options (not read yet)")
    assert lab.migrate_posts() == [], "no decision before every fact is read"
    a.env.sleep(5)
    result = first_decision(a)
    first = result.sentence
    assert "memory" in first and "started task UPID:" in first
    assert result.fields["result"] == "started"
    [post] = lab.migrate_posts()
    assert post.status == 200 and post.token_id == AGENT_TOKEN
    vmid = vmid_of(post)
    a.env.sleep(5)
    assert "running for" in a.run_cycle().sentence
    assert len(lab.migrate_posts()) == 1, "nothing new while one is in flight"
    # followed to its end (the 10 GiB move takes ~13 s), one 5 s cycle at a time
    following = []
    for _ in range(6):
        a.env.sleep(5)
        following.append(a.run_cycle().sentence)
        if a.inflight is None:
            break
    assert following[-1].startswith(f"migrated vm {vmid}"), following
    assert all("running for" in s for s in following[:-1]), following
    assert lab.requests("GET", "/tasks/UPID:"), "the task's status was read"
    assert lab.node_of(vmid) == "pve2"
    assert a.inflight is None and vmid in a.cooldown_until
    a.env.sleep(5)
    assert a.run_cycle().sentence.startswith("waiting"), "no decision on pre-migration statistics"
    assert len(lab.migrate_posts()) == 1


def test_unmovable_guests_are_learnt_and_skipped_without_a_post() -> None:
    lab = lab_with(memory_hot(local_disk=(101, 102, 103, 104)))
    a = lab.agent
    assert "started task" in first_decision(a).sentence
    assert [(vmid_of(p), p.status) for p in lab.migrate_posts()] == [(105, 200)]
    asked = {vmid_of(r) for r in lab.requests("GET", "/migrate")}
    learnt = set(a.unmovable_until)
    assert learnt, "(with seed 3) PVE was asked about a local-disk guest first"
    assert learnt == asked - {105} and learnt <= {101, 102, 103, 104}
    assert a.inflight is not None and a.inflight.vmid == 105


def test_no_post_without_confirmed_leadership() -> None:
    election = LeaderThatCannotConfirm()
    lab = lab_with(memory_hot(), election=election)
    result = first_decision(lab.agent)
    assert "leadership could not be confirmed" in result.sentence
    assert result.fields["result"] == "not-leader"
    assert lab.requests("GET", "/migrate"), "it got as far as the preconditions"
    assert election.confirms == 1 and lab.requests("POST") == []


@pytest.mark.parametrize(("config", "prefix"), [
    (Config(enabled=False, seed=1), "observe only (enabled: false), not started:"),
    (Config(dry_run=True, seed=1), "dry run, not started:"),
])
def test_disabled_and_dry_run_never_post(config: Config, prefix: str) -> None:
    lab = lab_with(memory_hot(), config=config)
    a = lab.agent
    first_decision(a)
    a.env.sleep(5)
    sentence = a.run_cycle().sentence
    assert sentence.startswith(prefix), sentence
    assert lab.requests("POST") == []


def test_cycle_never_raises_and_names_the_error() -> None:
    lab = lab_with(memory_hot())
    timeout = lab.faults.add(kind="timeout", method="GET", path="/cluster/resources", count=1)
    result = lab.agent.run_cycle()
    assert "cannot reach the PVE API: GET /cluster/resources: timed out" in result.sentence
    assert result.level == logging.WARNING and result.error is None
    assert timeout.fired == 1
    assert lab.sim.request_log == [], "nothing else asked (and nothing started) without a sample"


def test_an_unexpected_exception_is_an_error_with_its_traceback() -> None:
    lab = lab_with(memory_hot())
    attempts: list[float] = []

    def connect() -> PveClient:
        attempts.append(lab.sim.now)
        if len(attempts) == 1:
            raise ZeroDivisionError("boom")
        return lab.client

    env = PveEnvironment(node="pve1", connect=connect, election=AlwaysLeader(),
                         clock=VirtualClock(lab.sim))
    a = Agent(env, ConfigSource.fixed(Config(seed=3)))
    failed = a.run_cycle()
    assert failed.sentence == ("leading as the only balancer (no election); "
                               "cycle failed: ZeroDivisionError: boom")
    assert failed.level == logging.ERROR
    assert isinstance(failed.error, ZeroDivisionError), "the daemon logs its traceback"
    assert lab.sim.request_log == []
    a.env.sleep(5)
    assert "started task" in first_decision(a).sentence, "the next cycles connect and go on"
    assert len(attempts) == 2 and len(lab.migrate_posts()) == 1


def test_migrate_post_failure_puts_the_guest_in_cooldown() -> None:
    # the circuit breaker off: this is about each guest's cooldown alone
    lab = lab_with(memory_hot(), config=Config(seed=3, breaker_failures=0))
    refused = refuse_migrations(lab, range(101, 106))
    a = lab.agent
    sentence = first_decision(a).sentence
    assert "could not start" in sentence and "cooldown" in sentence
    assert "can't lock file" in sentence, "PVE's reason is named"
    [vmid] = [v for v, rule in refused.items() if rule.fired]
    assert refused[vmid].fired == 1 and vmid in a.cooldown_until
    assert lab.migrate_posts() == [], "nothing reached PVE"
    # six more cycles, five candidates: a guest retried before its cooldown
    # ends would show as a rule that fired twice
    for _ in range(6):
        a.env.sleep(5)
        last = a.run_cycle().sentence
    assert {v: rule.fired for v, rule in refused.items()} == dict.fromkeys(range(101, 106), 1), \
        "each guest tried once, never retried in a loop"
    assert last.endswith("no movable vm on pve1 (5 in cooldown)"), last


def test_cpu_mode_waits_for_a_minute_of_guest_history_without_rrd() -> None:
    lab = lab_with(cpu_hot())
    # The guests' RRD holds no data yet: rows come without a cpu value.
    lab.faults.add(kind="missing_fields", method="GET", path="/nodes/pve1/qemu/*/rrddata",
                   fields=("cpu",))

    def guest_rrd_reads() -> list[int]:
        return sorted(vmid_of(r) for r in lab.requests("GET", "/rrddata") if "/qemu/" in r.path)

    a = lab.agent
    sampled = a.env.now()
    first = first_decision(a).sentence
    assert "still warming up" in first and lab.requests("POST") == []
    assert guest_rrd_reads() == [101, 102, 103, 104], "RRD asked once per guest"
    while a.env.now() < sampled + 55:
        a.env.sleep(5)
        assert "still warming up" in a.run_cycle().sentence
    a.env.sleep(5)
    sentence = a.run_cycle().sentence
    assert "started task" in sentence and "vm 101" not in sentence, "busiest VM kept"
    assert [vmid_of(p) for p in lab.migrate_posts()] == [102]
    assert guest_rrd_reads() == [101, 102, 103, 104]


# -- configuration reload -------------------------------------------------


def write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_config_reload_on_change_and_keep_last_good(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "cpu_max: 0.7\n", 1000)
    source = ConfigSource(path)
    assert source.refresh()
    assert source.config is not None and source.config.cpu_max == 0.7
    assert not source.refresh(), "unchanged file is not re-read"
    write(path, "cpu_max: high\n", 2000)
    with caplog.at_level(logging.ERROR):
        assert not source.refresh()
    assert source.config.cpu_max == 0.7, "last good configuration kept"
    assert "balancer.yaml:1" in caplog.text and "keeping the previous" in caplog.text
    write(path, "cpu_max: 0.75\ndry_run: true\n", 3000)
    assert source.refresh()
    assert source.config.cpu_max == 0.75 and source.config.dry_run


def test_never_valid_config_makes_the_agent_passive(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "enabled: maybe\n", 1000)
    lab = lab_with(memory_hot())
    a = Agent(lab.agent.env, ConfigSource(path))
    sentence = a.run_cycle().sentence
    assert "passive: no valid configuration" in sentence
    assert lab.sim.request_log == []
    write(path, "enabled: true\n", 2000)
    a.env.sleep(5)
    assert "started task" in first_decision(a).sentence
    assert len(lab.migrate_posts()) == 1


def test_sighup_reload_rereads_even_without_a_visible_change(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "cpu_max: 0.7\n", 1000)
    source = ConfigSource(path)
    source.refresh()
    # same size and mtime, different content: only a forced reload sees it
    write(path, "cpu_max: 0.6\n", 1000)
    assert not source.refresh()
    lab = lab_with(memory_hot())
    a = Agent(lab.agent.env, source)
    assert a.reload()
    assert source.config is not None and source.config.cpu_max == 0.6


def test_missing_config_file_means_defaults(tmp_path: Path) -> None:
    source = ConfigSource(tmp_path / "balancer.yaml")
    assert source.refresh()
    assert source.config == Config()


# -- terms ------------------------------------------------------------------


def test_losing_leadership_drops_the_followed_migration_and_a_new_term_starts_fresh() -> None:
    election = Switchable()
    lab = lab_with(memory_hot(), election=election)
    a = lab.agent
    assert a.run_cycle().sentence.startswith("became leader; ")
    a.env.sleep(5)
    first_decision(a)
    assert a.inflight is not None
    moving = a.inflight.vmid
    assert moving in a.cooldown_until, "in cooldown from the start of its move"
    election.leading = False
    a.env.sleep(5)
    asked = len(lab.sim.request_log)
    lost = a.run_cycle()
    assert lost.sentence == "lost the leader lock; standby (leader: pve2)"
    assert a.inflight is None and len(lab.sim.request_log) == asked, "a standby asks nothing"
    assert lost.fields["role"] == "standby"
    estimator = a.estimator
    election.leading = True
    a.env.sleep(5)
    term = a.env.now()
    again = a.run_cycle()
    assert again.sentence.startswith("became leader; ")
    assert a.estimator is not estimator, "EMAs restart in a new term"
    assert lab.requests("GET", "/nodes/pve1/rrddata", since=term), "... warmed from RRD"
    # 10 s after the first read, well within the client's 60 s cache
    assert lab.requests("GET", "/cluster/ha/rules", since=term), \
        "cached rules/options are re-read in a new term"
    assert again.fields["role"] == "leader"
