"""The per-cycle time budget and the watchdog, against a slow simulated API.

The agent runs in the simulator's virtual time (`simlab.inprocess`): a
latency fault makes every answer arrive late and moves the agent's clock by
as much, and a read timeout the client sets ends the wait when it expires,
as over HTTPS. The election is the real `PmxcfsElection` on a plain
directory with the same virtual clock, so its safety bound (60 s) judges
the cycles as on a node. What is asserted: how long each cycle took on the
agent's clock, what the election said, the WATCHDOG=1 pings sent to the
service manager, the journal lines, and the simulator's request log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pve_balancer.config import Config
from pve_balancer.election import PmxcfsElection
from pve_balancer.leadership import AlwaysLeader
from pvesim.clock import VirtualClock
from simlab.inprocess import InProcessLab, simulator
from tests.conftest import guest_spec, nodes_spec

SAFETY_BOUND = 60.0  # the election's and WatchdogSec's 60 s
CYCLE_LIMIT = 35.0  # the 30 s budget and 5 s for the rest (pve_balancer.budget)


def memory_hot() -> dict[str, Any]:
    """pve1 at ~85 % memory (five 10 GiB VMs on 64 GiB); pve2 nearly empty."""
    guests = [guest_spec(v, "pve1", cpu=0.1, cores=2, mem="10GiB", memory="10GiB")
              for v in range(101, 106)]
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "memory-hot", "nodes": nodes_spec(2), "guests": guests}


def slow_lab(tmp_path: Path, latency: float, config: Config | None = None) -> InProcessLab:
    """The agent on pve1 behind a fault injector that delays every GET by
    `latency` seconds, leading by the pmxcfs lock protocol on `tmp_path`."""
    sim = simulator(memory_hot())
    (tmp_path / "priv" / "lock").mkdir(parents=True)
    election = PmxcfsElection(tmp_path, "pve1", clock=VirtualClock(sim))
    lab = InProcessLab.attach(sim, config or Config(seed=3), election=election, faults_seed=0)
    assert lab.faults is not None
    lab.faults.add(kind="latency", method="GET", path="*", seconds=latency)
    return lab


def cycles(lab: InProcessLab, n: int) -> list[tuple[float, str, int]]:
    """Run `n` cycles through the daemon, the interval slept between them;
    each cycle's (duration on the agent's clock, sentence, pings sent)."""
    out = []
    for _ in range(n):
        start, pings = lab.sim.now, lab.notifications.count("WATCHDOG=1")
        result = lab.daemon.run_once()
        out.append((lab.sim.now - start, result.sentence,
                    lab.notifications.count("WATCHDOG=1") - pings))
        lab.agent.env.sleep(lab.daemon.interval())
    return out


def test_a_slow_api_ends_cycles_within_the_budget_and_the_leader_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pve_balancer")
    lab = slow_lab(tmp_path, latency=9.0)
    ran = cycles(lab, 10)
    report = "\n".join(f"{took:5.1f} s  {sentence}" for took, sentence, _ in ran)
    longest = max(took for took, _, _ in ran)
    assert longest <= CYCLE_LIMIT, f"a cycle took {longest:.1f} s:\n{report}"
    assert not [s for _, s, _ in ran if "stepped down" in s], \
        f"the leader stepped down on its own slow cycles:\n{report}"
    assert all("time budget is spent" in s or "waiting for facts" in s for _, s, _ in ran), \
        report
    assert [pings for _, _, pings in ran] == [1] * 10, "every cycle in time feeds the watchdog"
    assert lab.migrate_posts() == [], "nothing is started on a cycle out of time"
    said = [r for r in caplog.records if r.levelno >= logging.WARNING
            and "time budget" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]


def test_a_request_gets_only_what_is_left_of_the_budget(tmp_path: Path) -> None:
    lab = slow_lab(tmp_path, latency=9.0)
    took, sentence, _ = cycles(lab, 1)[0]
    # /cluster/resources and /cluster/tasks (9 s each), one slow endpoint
    # (9 s), then 3 s left: the fourth request is cut off at the budget
    assert "time budget is spent" in sentence
    assert 29.5 <= took <= 30.5, took
    served = [r.path for r in lab.sim.request_log]
    assert served[:2] == ["/cluster/resources", "/cluster/tasks"], served


def test_a_slow_but_workable_api_still_moves(tmp_path: Path) -> None:
    lab = slow_lab(tmp_path, latency=1.5)
    ran = cycles(lab, 6)
    report = "\n".join(f"{took:5.1f} s  {sentence}" for took, sentence, _ in ran)
    # 10 GETs of 1.5 s leave more than the POST's whole 10 s timeout; the
    # term's first cycles read the slow facts, one per cycle
    assert any("started task" in s for _, s, _ in ran[:5]), report
    assert len(lab.migrate_posts()) == 1, report
    assert max(took for took, _, _ in ran) <= CYCLE_LIMIT, report


class StallingElection(AlwaysLeader):
    """The only balancer, whose election stalls for `stall` seconds of the
    agent's clock on the cycles listed (a pmxcfs call that hangs: nothing
    the request budget can bound)."""

    def __init__(self, lab_clock: VirtualClock, stall: float, on: set[int]) -> None:
        super().__init__()
        self.clock, self.stall, self.on, self.ticks = lab_clock, stall, on, 0

    def tick(self, now: float) -> str | None:
        self.ticks += 1
        if self.ticks in self.on:
            self.clock.sleep(self.stall)
        return super().tick(now)


def test_the_watchdog_is_fed_only_by_cycles_in_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pve_balancer")
    sim = simulator(memory_hot())
    election = StallingElection(VirtualClock(sim), stall=50.0, on={2, 3})
    lab = InProcessLab.attach(sim, Config(seed=3, dry_run=True), election=election)
    ran = cycles(lab, 4)
    assert [pings for _, _, pings in ran] == [1, 0, 0, 1], ran
    late = [r.getMessage() for r in caplog.records if "watchdog is not fed" in r.getMessage()]
    assert len(late) == 1 and late[0].startswith("cycle took 50 s"), late
    assert any("complete in time again" in r.getMessage() for r in caplog.records)


def test_a_long_interval_still_feeds_the_watchdog_between_cycles() -> None:
    sim = simulator(memory_hot())
    lab = InProcessLab.attach(sim, Config(seed=3, dry_run=True, interval=60.0))
    lab.daemon.sleep_slice = 1.0
    lab.run(180)
    pings = lab.notifications.count("WATCHDOG=1")
    # three cycles of a 60 s interval: a ping at least every 10 s in between
    assert pings >= 3 * 6, pings
