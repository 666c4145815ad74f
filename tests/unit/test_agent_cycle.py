"""Agent.run_cycle around the policy, with a scripted stand-in for the API
client (the scenario tests run the real client against pvesim)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pve_balancer.agent import Agent
from pve_balancer.config import Config, ConfigSource
from pve_balancer.env import PveEnvironment
from pve_balancer.leadership import AlwaysLeader
from pve_balancer.model import Guest, Node, Preconditions, Snapshot, Task
from pve_balancer.pve import PveError

GIB = 1 << 30
UPID = "UPID:pve1:00001234:00ABCDEF:6745A0F0:qmigrate:{}:pve-balancer@pve!agent:"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class FakeClient:
    """Answers like PveClient from a fixed memory-hot cluster: pve1 at 90 %
    memory, pve2 at 30 %."""

    def __init__(self, unmovable: frozenset[int] = frozenset()) -> None:
        self.unmovable = unmovable
        self.calls: list[str] = []
        self.requests = 0
        self.fail_sample: Exception | None = None
        self.task_running = True

    def snapshot(self, now: float) -> Snapshot:
        nodes = (Node("pve1", True, 0.2, 16, int(57.6 * GIB), 64 * GIB),
                 Node("pve2", True, 0.2, 16, int(19.2 * GIB), 64 * GIB))
        guests = tuple(Guest(100 + i, f"vm{100 + i}", "pve1", "qemu", "running", 0.05, 2,
                             4 * GIB, 4 * GIB) for i in range(1, 6))
        return Snapshot(time=now, nodes=nodes, guests=guests)

    def sample(self, now: float) -> tuple[Snapshot, tuple[Task, ...]]:
        self.calls.append("sample")
        if self.fail_sample is not None:
            raise self.fail_sample
        return self.snapshot(now), ()

    def node_cpu_history(self, node: str, now: float) -> list[tuple[float, float]]:
        self.calls.append(f"rrd {node}")
        return [(now - 60, 0.2), (now - 30, 0.2)]

    def guest_cpu_history(self, node: str, vmid: int, now: float) -> list[tuple[float, float]]:
        self.calls.append(f"rrd {vmid}")
        return [(now - 60, 0.05)]

    def preconditions(self, node: str, vmid: int, target: str) -> Preconditions:
        self.calls.append(f"pre {vmid}")
        disks = ("local-lvm:vm-disk-0",) if vmid in self.unmovable else ()
        return Preconditions(vmid=vmid, local_disks=disks)

    def migrate(self, node: str, vmid: int, target: str) -> str:
        self.calls.append(f"POST {vmid} {target}")
        return UPID.format(vmid)

    def task_status(self, upid: str) -> Task:
        self.calls.append("status")
        return Task(upid=upid, node="pve1", kind="qmigrate", vmid=upid.split(":")[6],
                    running=self.task_running, exitstatus=None if self.task_running else "OK")

    def invalidate_slow(self) -> None:
        self.calls.append("invalidate")


class Standby:
    is_leader = False

    def __init__(self) -> None:
        self.confirms = 0

    def tick(self, now: float) -> str | None:
        return None

    def confirm(self, now: float) -> bool:
        self.confirms += 1
        return False

    def release(self) -> None:
        pass

    def describe(self) -> str:
        return "standby (leader: pve2)"


class LeaderThatCannotConfirm(Standby):
    is_leader = True

    def describe(self) -> str:
        return "leader"


def agent(client: Any, election: Any = None, config: Config | None = None,
          source: ConfigSource | None = None) -> Agent:
    env = PveEnvironment(node="pve1", connect=lambda: client,
                         election=election or AlwaysLeader(), clock=Clock())
    return Agent(env, source or ConfigSource.fixed(config or Config(seed=3)))


def posts(client: FakeClient) -> list[str]:
    return [c for c in client.calls if c.startswith("POST")]


def test_standby_touches_no_api() -> None:
    client = FakeClient()
    a = agent(client, Standby())
    result = a.run_cycle()
    assert result.sentence == "standby (leader: pve2)"
    assert client.calls == []
    assert result.fields["role"] == "standby"


def test_leader_starts_one_migration_then_follows_it() -> None:
    client = FakeClient()
    a = agent(client)
    result = a.run_cycle()
    first = result.sentence
    assert first.startswith("leading as the only balancer")
    assert "memory" in first and "started task UPID:" in first
    assert len(posts(client)) == 1
    assert result.fields["result"] == "started"
    second = a.run_cycle().sentence
    assert "running for" in second
    assert len(posts(client)) == 1, "nothing new while one is in flight"
    client.task_running = False
    a.env.sleep(30)
    done = a.run_cycle().sentence
    assert done.startswith("migrated vm")
    assert a.inflight is None and a.cooldown_until
    a.env.sleep(5)
    assert a.run_cycle().sentence.startswith("waiting"), "no decision on pre-migration statistics"
    assert len(posts(client)) == 1


def test_unmovable_guests_are_learnt_and_skipped_without_a_post() -> None:
    client = FakeClient(unmovable=frozenset({101, 102, 103, 104}))
    a = agent(client)
    a.run_cycle()
    assert posts(client) == ["POST 105 pve2"]
    assert set(a.unmovable_until) <= {101, 102, 103, 104}
    assert all(f"POST {v} pve2" not in client.calls for v in (101, 102, 103, 104))


def test_no_post_without_confirmed_leadership() -> None:
    client = FakeClient()
    election = LeaderThatCannotConfirm()
    sentence = agent(client, election).run_cycle().sentence
    assert "leadership could not be confirmed" in sentence
    assert election.confirms == 1 and posts(client) == []


@pytest.mark.parametrize(("config", "prefix"), [
    (Config(enabled=False, seed=1), "observe only (enabled: false), not started:"),
    (Config(dry_run=True, seed=1), "dry run, not started:"),
])
def test_disabled_and_dry_run_never_post(config: Config, prefix: str) -> None:
    client = FakeClient()
    a = agent(client, config=config)
    a.run_cycle()
    sentence = a.run_cycle().sentence
    assert sentence.startswith(prefix), sentence
    assert posts(client) == []


def test_cycle_never_raises_and_names_the_error() -> None:
    client = FakeClient()
    client.fail_sample = PveError("GET /cluster/resources: timed out")
    a = agent(client)
    assert "cannot reach the PVE API: GET /cluster/resources: timed out" in a.run_cycle().sentence
    client.fail_sample = ZeroDivisionError("boom")
    failed = a.run_cycle()
    assert failed.sentence == "cycle failed: ZeroDivisionError: boom"
    assert failed.level == logging.ERROR
    assert isinstance(failed.error, ZeroDivisionError), "the daemon logs its traceback"


def test_migrate_post_failure_puts_the_guest_in_cooldown() -> None:
    client = FakeClient()

    def refuse(node: str, vmid: int, target: str) -> str:
        client.calls.append(f"POST {vmid} {target}")
        raise PveError(f"POST /nodes/{node}/qemu/{vmid}/migrate: HTTP 500 busy", status=500)

    client.migrate = refuse  # type: ignore[method-assign]
    a = agent(client)
    sentence = a.run_cycle().sentence
    assert "could not start" in sentence and "cooldown" in sentence
    vmid = int(posts(client)[0].split()[1])
    assert vmid in a.cooldown_until
    a.run_cycle()
    assert f"POST {vmid} pve2" not in posts(client)[1:], "never retried in a loop"


class CpuHotClient(FakeClient):
    """pve1 at 95 % CPU (EMA), guests without RRD history."""

    def snapshot(self, now: float) -> Snapshot:
        nodes = (Node("pve1", True, 0.95, 16, 20 * GIB, 64 * GIB),
                 Node("pve2", True, 0.20, 16, 20 * GIB, 64 * GIB))
        guests = tuple(Guest(100 + i, f"vm{100 + i}", "pve1", "qemu", "running", c, 4,
                             2 * GIB, 4 * GIB) for i, c in enumerate((1.0, 0.9, 0.8, 0.7), 1))
        return Snapshot(time=now, nodes=nodes, guests=guests)

    def node_cpu_history(self, node: str, now: float) -> list[tuple[float, float]]:
        level = 0.95 if node == "pve1" else 0.2
        return [(now - 60, level), (now - 30, level)]

    def guest_cpu_history(self, node: str, vmid: int, now: float) -> list[tuple[float, float]]:
        self.calls.append(f"rrd {vmid}")
        return []


def test_cpu_mode_waits_for_a_minute_of_guest_history_without_rrd() -> None:
    client = CpuHotClient()
    a = agent(client)
    first = a.run_cycle().sentence
    assert "still warming up" in first and posts(client) == []
    assert sorted(c for c in client.calls if c.startswith("rrd 1")) == [
        "rrd 101", "rrd 102", "rrd 103", "rrd 104"], "RRD asked once per guest"
    for _ in range(11):
        a.env.sleep(5)
        assert "still warming up" in a.run_cycle().sentence
    a.env.sleep(5)
    sentence = a.run_cycle().sentence
    assert "started task" in sentence and "vm 101" not in sentence, "busiest VM kept"
    assert len([c for c in client.calls if c.startswith("rrd 1")]) == 4


# -- configuration reload -------------------------------------------------


def write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text)
    import os

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
    client = FakeClient()
    a = agent(client, source=ConfigSource(path))
    sentence = a.run_cycle().sentence
    assert "passive: no valid configuration" in sentence
    assert client.calls == []
    write(path, "enabled: true\n", 2000)
    assert "started task" in a.run_cycle().sentence


def test_sighup_reload_rereads_even_without_a_visible_change(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "cpu_max: 0.7\n", 1000)
    source = ConfigSource(path)
    source.refresh()
    # same size and mtime, different content: only a forced reload sees it
    write(path, "cpu_max: 0.6\n", 1000)
    assert not source.refresh()
    a = agent(FakeClient(), source=source)
    assert a.reload()
    assert source.config is not None and source.config.cpu_max == 0.6


def test_missing_config_file_means_defaults(tmp_path: Path) -> None:
    source = ConfigSource(tmp_path / "balancer.yaml")
    assert source.refresh()
    assert source.config == Config()


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


def test_losing_leadership_drops_the_followed_migration_and_a_new_term_starts_fresh() -> None:
    client = FakeClient()
    election = Switchable()
    a = agent(client, election)
    assert a.run_cycle().sentence.startswith("became leader; ")
    assert a.inflight is not None
    moving = a.inflight.vmid
    assert moving in a.cooldown_until, "in cooldown from the start of its move"
    election.leading = False
    calls = len(client.calls)
    lost = a.run_cycle()
    assert lost.sentence == "lost the leader lock; standby (leader: pve2)"
    assert a.inflight is None and len(client.calls) == calls, "a standby asks nothing"
    assert lost.fields["role"] == "standby"
    estimator = a.estimator
    election.leading = True
    a.env.sleep(5)
    again = a.run_cycle()
    assert again.sentence.startswith("became leader; ")
    assert a.estimator is not estimator, "EMAs restart (warmed from RRD) in a new term"
    assert "invalidate" in client.calls, "cached rules/options are re-read in a new term"
    assert again.fields["role"] == "leader"
