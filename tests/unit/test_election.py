"""PmxcfsElection against the pmxcfs emulator: real mkdir/utime/rmdir on
FUSE mounts, with the emulator's manual clock so every lifetime boundary is
hit exactly (the real 120 s lifetime is used; nothing waits for it)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pve_balancer.election import PmxcfsElection
from pve_balancer.leadership import Election
from pvesim.pmxcfs import PmxcfsEmulator
from tests.pmxcfs.support import LOCK, running_emulator

pytestmark = pytest.mark.fuse


class SharedClock:
    """The agents' clock and the emulator's, moved together."""

    def __init__(self, emu: PmxcfsEmulator) -> None:
        self.emu = emu
        self.t = emu.now()

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t = self.emu.advance(seconds)
        return self.t


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[PmxcfsEmulator]:
    with running_emulator(tmp_path) as emulator:
        yield emulator


@pytest.fixture
def clock(emu: PmxcfsEmulator) -> SharedClock:
    return SharedClock(emu)


def election(emu: PmxcfsEmulator, node: str, clock: SharedClock) -> PmxcfsElection:
    return PmxcfsElection(emu.mounts[node], node, clock=clock)


def leaders(elections: list[PmxcfsElection]) -> list[str]:
    return [e.node for e in elections if e.is_leader]


def test_it_is_an_election(emu: PmxcfsEmulator, clock: SharedClock) -> None:
    assert isinstance(election(emu, "pve1", clock), Election)


def test_exactly_one_of_three_leads(emu: PmxcfsEmulator, clock: SharedClock) -> None:
    els = [election(emu, n, clock) for n in ("pve2", "pve1", "pve3")]
    said = [e.tick(clock.now()) for e in els]
    assert said == ["became leader (lock acquired)",
                    "standby: lock held by another node",
                    "standby: lock held by another node"]
    for _ in range(30):  # 150 s: well past the lifetime, renewed throughout
        clock.advance(5)
        assert [e.tick(clock.now()) for e in els] == [None, None, None]
        assert leaders(els) == ["pve2"]
    assert els[0].describe() == "leader"


def test_orderly_release_hands_over_on_the_next_tick(emu: PmxcfsEmulator,
                                                    clock: SharedClock) -> None:
    a, b = election(emu, "pve1", clock), election(emu, "pve2", clock)
    a.tick(clock.now())
    b.tick(clock.now())
    a.release()
    assert a.last_release == "lock released"
    assert not a.is_leader
    assert not (emu.mounts["pve2"] / LOCK).exists()
    clock.advance(5)
    assert b.tick(clock.now()) == "became leader (lock acquired)"
    assert leaders([a, b]) == ["pve2"]


def test_release_when_not_leading_leaves_the_lock_alone(emu: PmxcfsEmulator,
                                                       clock: SharedClock) -> None:
    a, b = election(emu, "pve1", clock), election(emu, "pve2", clock)
    a.tick(clock.now())
    b.tick(clock.now())
    b.release()
    assert b.last_release == "this node does not hold the lock; nothing to release"
    assert (emu.mounts["pve1"] / LOCK).exists()
    assert a.is_leader


def test_stop_right_after_a_restart_still_releases_this_nodes_lock(
        emu: PmxcfsEmulator, clock: SharedClock) -> None:
    old = election(emu, "pve1", clock)
    old.tick(clock.now())
    clock.advance(3)  # restarted, and stopped again before its first tick
    new = election(emu, "pve1", clock)
    new.release()
    assert new.last_release == "lock released"
    assert not (emu.mounts["pve2"] / LOCK).exists()


def test_release_without_quorum_leaves_the_lock(emu: PmxcfsEmulator,
                                               clock: SharedClock) -> None:
    a = election(emu, "pve1", clock)
    a.tick(clock.now())
    emu.set_quorate("pve1", False)
    a.release()
    assert a.last_release == "lock left in place: the renew before rmdir failed (EACCES)"
    assert (emu.mounts["pve2"] / LOCK).exists()


def test_crashed_leader_is_replaced_after_the_lifetime_and_never_before(
        emu: PmxcfsEmulator, clock: SharedClock) -> None:
    a, b = election(emu, "pve1", clock), election(emu, "pve2", clock)
    a.tick(clock.now())
    clock.advance(10)
    a.tick(clock.now())  # last renew, then pve1's agent dies
    last_renew = clock.now()
    b.tick(clock.now())
    for _ in range(40):  # 200 s at most
        clock.advance(5)
        said = b.tick(clock.now())
        elapsed = clock.now() - last_renew
        if elapsed <= 120:
            assert not b.is_leader, f"took over {elapsed} s after the last renew"
        if b.is_leader:
            break
    assert b.is_leader, "no takeover 200 s after the leader died"
    assert said == "became leader (lock acquired after it expired)"
    assert 120 < elapsed <= 120 + 1 + 5


def test_restart_on_the_same_node_resumes_at_once(emu: PmxcfsEmulator,
                                                 clock: SharedClock) -> None:
    old = election(emu, "pve3", clock)
    other = election(emu, "pve1", clock)
    old.tick(clock.now())
    other.tick(clock.now())
    clock.advance(7)  # pve3's agent restarts without releasing
    new = election(emu, "pve3", clock)
    assert new.tick(clock.now()) == "became leader (resumed the lock this node holds)"
    clock.advance(5)
    other.tick(clock.now())
    assert leaders([new, other]) == ["pve3"]


def test_quorum_loss_steps_down_within_one_tick(emu: PmxcfsEmulator,
                                               clock: SharedClock) -> None:
    a, b = election(emu, "pve1", clock), election(emu, "pve2", clock)
    a.tick(clock.now())
    b.tick(clock.now())
    last_renew = clock.now()
    emu.set_quorate("pve1", False)
    clock.advance(5)
    assert a.tick(clock.now()) == "stepped down: node lost quorum"
    assert not a.is_leader
    assert a.confirm(clock.now()) is False
    assert a.describe() == "standby (no quorum)"
    for _ in range(40):  # the quorate side takes over after expiry
        clock.advance(5)
        assert a.tick(clock.now()) is None
        b.tick(clock.now())
        assert b.is_leader == (clock.now() - last_renew > 120)
        if b.is_leader:
            break
    assert b.is_leader
    emu.set_quorate("pve1", True)
    clock.advance(5)
    assert a.tick(clock.now()) == "standby: lock held by another node"
    assert leaders([a, b]) == ["pve2"]


def test_a_failed_renew_steps_down_at_once(emu: PmxcfsEmulator, clock: SharedClock) -> None:
    a = election(emu, "pve1", clock)
    a.tick(clock.now())
    # Someone removes the lock and pve2 takes it behind the leader's back.
    os.rmdir(emu.mounts["pve2"] / LOCK)
    os.mkdir(emu.mounts["pve2"] / LOCK)
    clock.advance(10)
    assert a.tick(clock.now()) == "stepped down: renew failed (EACCES)"
    assert not a.is_leader
    assert a.confirm(clock.now()) is False


def test_confirm_renews_right_before_acting(emu: PmxcfsEmulator, clock: SharedClock) -> None:
    a = election(emu, "pve1", clock)
    a.tick(clock.now())
    clock.advance(3)
    assert a.confirm(clock.now()) is True
    assert a.last_renew == clock.now()
    assert emu.status()["locks"]["pve-balancer"]["age"] == 0
    os.rmdir(emu.mounts["pve3"] / LOCK)
    assert a.confirm(clock.now()) is False
    assert a.tick(clock.now()) == "stepped down: renew failed (ENOENT)"


def test_a_renew_from_the_future_is_refused(emu: PmxcfsEmulator, clock: SharedClock) -> None:
    a = election(emu, "pve1", clock)
    a.tick(clock.now())
    for _ in range(4):
        clock.advance(10)
        a.tick(clock.now())
        # the election never writes a time ahead of its clock
        assert os.stat(emu.mounts["pve1"] / LOCK).st_mtime <= int(clock.now())
    # a time from the future written on this node poisons later renews
    os.utime(emu.mounts["pve1"] / LOCK, (0, int(clock.now()) + 3600))
    clock.advance(10)
    assert a.tick(clock.now()) == "stepped down: renew failed (EACCES)"


def test_leader_stops_acting_past_the_safety_bound(emu: PmxcfsEmulator,
                                                  clock: SharedClock) -> None:
    a, b = election(emu, "pve1", clock), election(emu, "pve2", clock)
    a.tick(clock.now())
    clock.advance(60)
    assert a.is_leader
    clock.advance(1)  # the cycle stalled: no tick for 61 s
    assert not a.is_leader
    assert a.tick(clock.now()) == \
        "stepped down: last good renew 61 s ago exceeds the 60 s safety bound"
    assert a.confirm(clock.now()) is False
    b.tick(clock.now())
    assert not b.is_leader  # 61 s < lifetime: nobody else may take it yet
    clock.advance(5)
    assert a.tick(clock.now()) == "became leader (resumed the lock this node holds)"


def test_describe_names_the_published_leader(emu: PmxcfsEmulator, clock: SharedClock) -> None:
    a, b = election(emu, "pve1", clock), election(emu, "pve2", clock)
    a.tick(clock.now())
    b.tick(clock.now())
    assert b.describe() == "standby (leader: unknown)"
    status = emu.mounts["pve1"] / "pve-balancer" / "status.json"
    status.parent.mkdir()
    status.write_text(json.dumps({"leader": "pve1", "since": clock.now(),
                                  "updated": clock.now(), "refresh": 30}))
    assert b.describe() == "standby (leader: pve1)"
    assert a.describe() == "leader"
    status.write_text("{not json")
    assert b.describe() == "standby (leader: unknown)"


def test_confirm_refuses_without_quorum_or_past_the_safety_bound(
        emu: PmxcfsEmulator, clock: SharedClock) -> None:
    a = election(emu, "pve1", clock)
    a.tick(clock.now())
    emu.set_quorate("pve1", False)
    assert a.confirm(clock.now()) is False
    assert a.tick(clock.now()) == "stepped down: node lost quorum"
    emu.set_quorate("pve1", True)
    clock.advance(5)
    assert a.tick(clock.now()) == "became leader (resumed the lock this node holds)"
    clock.advance(61)  # stalled mid-cycle; a renew would still work, but
    assert a.confirm(clock.now()) is False  # the bound says: stop acting
    assert a.tick(clock.now()) == \
        "stepped down: last good renew 61 s ago exceeds the 60 s safety bound"
