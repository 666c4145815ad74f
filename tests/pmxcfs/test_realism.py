"""The emulator's realistic timing, one switch at a time (`Realism`): what a
real 3-node pmxcfs showed, so the election is tested against it without
the real cluster. The delays here are longer than the real ones where a
test needs room to act before they run out; each assertion is about order
(what is seen before and after a change lands), not about speed."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pve_balancer.election import PmxcfsElection
from pvesim.pmxcfs import INSTANT, REALISTIC, PmxcfsEmulator, Realism
from tests.pmxcfs.support import LOCK, errno_of, running_emulator

pytestmark = pytest.mark.fuse


def _quorate(emu: PmxcfsEmulator, node: str) -> int:
    return int(json.loads((emu.mounts[node] / ".members").read_text())["cluster"]["quorate"])


def _until(cond: object, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the change never landed"
        time.sleep(0.02)


def test_realistic_is_what_the_real_cluster_showed() -> None:
    observed = Realism(unlock_delay=0.005, quorum_loss_delay=8.0, quorum_return_delay=3.2,
                       write_stall=True, attr_cache=1.0)
    assert observed == REALISTIC
    assert Realism() == INSTANT


def test_an_unlock_request_deletes_the_expired_lock_after_it_returns(tmp_path: Path) -> None:
    with running_emulator(tmp_path, realism=Realism(unlock_delay=1.0)) as emu:
        os.mkdir(emu.mounts["pve1"] / LOCK)
        emu.advance(121)
        lock2 = emu.mounts["pve2"] / LOCK
        assert errno_of(lambda: os.utime(lock2, (0, 0))) == "EACCES"
        assert errno_of(lambda: os.mkdir(lock2)) == "EEXIST"  # the deletion has not landed
        _until(lambda: errno_of(lambda: os.mkdir(lock2)) is None)
        assert emu.status()["locks"]["pve-balancer"]["writer"] == "pve2"


def test_the_election_takes_over_at_its_first_attempt_despite_the_delay(
        tmp_path: Path) -> None:
    """A mkdir at once would lose to a 30 ms deletion (as above); the
    election's short retries after the unlock request win in the same tick."""
    with running_emulator(tmp_path, realism=Realism(unlock_delay=0.03)) as emu:
        os.mkdir(emu.mounts["pve1"] / LOCK)
        emu.advance(121)
        election = PmxcfsElection(emu.mounts["pve2"], "pve2")
        assert election.tick(emu.now()) == "became leader (lock acquired after it expired)"


def test_a_cut_lands_late_and_the_writes_in_between_stall(tmp_path: Path) -> None:
    realism = Realism(quorum_loss_delay=1.5, write_stall=True)
    with running_emulator(tmp_path, realism=realism, manual_clock=False) as emu:
        emu.set_quorate("pve3", False)
        assert _quorate(emu, "pve3") == 1  # not yet
        results: dict[str, str | None] = {}
        seen_after: dict[str, int] = {}

        def write(node: str) -> None:
            path = emu.mounts[node] / f"f-{node}"
            results[node] = errno_of(lambda: path.write_text("x"))
            seen_after[node] = _quorate(emu, "pve3")

        threads = [threading.Thread(target=write, args=(n,)) for n in ("pve1", "pve3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        # both writes returned only once the cut had landed
        assert seen_after == {"pve1": 0, "pve3": 0}
        assert results == {"pve1": None, "pve3": "EPERM"}
        assert errno_of(lambda: (emu.mounts["pve3"] / "g").write_text("x")) == "EACCES"
        assert errno_of(lambda: (emu.mounts["pve2"] / "g").write_text("x")) is None


def test_a_heal_lands_late(tmp_path: Path) -> None:
    realism = Realism(quorum_return_delay=1.0)
    with running_emulator(tmp_path, realism=realism, manual_clock=False) as emu:
        emu.set_quorate("pve3", False)
        assert _quorate(emu, "pve3") == 0  # a cut without delay: at once
        emu.set_quorate("pve3", True)
        assert _quorate(emu, "pve3") == 0
        assert errno_of(lambda: os.mkdir(emu.mounts["pve3"] / LOCK)) == "EACCES"
        _until(lambda: _quorate(emu, "pve3") == 1)
        assert errno_of(lambda: os.mkdir(emu.mounts["pve3"] / LOCK)) is None


def test_stat_may_show_a_deleted_lock_until_the_cache_expires_mkdir_is_not_fooled(
        tmp_path: Path) -> None:
    with running_emulator(tmp_path, realism=Realism(attr_cache=5.0)) as emu:
        lock1, lock3 = emu.mounts["pve1"] / LOCK, emu.mounts["pve3"] / LOCK
        os.mkdir(lock1)
        os.stat(lock1)
        os.rmdir(lock3)
        assert lock1.is_dir()  # pve1's kernel still has it cached
        assert errno_of(lambda: os.mkdir(lock1)) is None  # mkdir asks the file system
        os.rmdir(lock3)
        _until(lambda: not lock1.exists(), 15)


def test_instant_changes_everything_at_once(tmp_path: Path) -> None:
    with running_emulator(tmp_path, manual_clock=False) as emu:
        emu.set_quorate("pve3", False)
        assert _quorate(emu, "pve3") == 0
        assert errno_of(lambda: (emu.mounts["pve3"] / "f").write_text("x")) == "EACCES"
