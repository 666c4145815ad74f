"""A file system that holds requests without answering (pmxcfs while it
stops: up to ~10 s on 9.1.6; or hung) must not hold the leader: the election
bounds each call, steps down when one does not answer and says so once, and
never stacks a second blocked call on the first.

Two real ways to block a call: a FIFO as `.members` (its open() waits for a
writer, no FUSE needed), and the pmxcfs emulator's write stall during a
pending cut (a renew waits there until the cut lands, then fails with EPERM).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pve_balancer.bounded import BoundedCalls, NoAnswerError
from pve_balancer.config import ConfigSource
from pve_balancer.election import PmxcfsElection
from pvesim.pmxcfs import Realism
from tests.pmxcfs.support import running_emulator

QUORATE = json.dumps({"nodename": "pve1", "version": 1,
                      "cluster": {"name": "c", "version": 1, "nodes": 3, "quorate": 1}})


def _workers(name: str) -> int:
    return len(_worker_threads(name))


def _worker_threads(name: str) -> set[threading.Thread]:
    """The live threads called `name`. Other elections of the test process
    share the default name, and their idle workers end on their own, so a
    test compares the sets, not the counts."""
    return {t for t in threading.enumerate() if t.name == name and t.is_alive()}


def _until(what: str, cond: Callable[[], bool], limit: float = 30.0) -> None:
    """Wait for a condition (a bound against hanging, not a timed assertion)."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "priv" / "lock").mkdir(parents=True)
    (tmp_path / ".members").write_text(QUORATE)
    return tmp_path


class Fifo:
    """`.members` replaced by a FIFO: a read of it blocks until `answer()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink()
        os.mkfifo(path)

    def answer(self, text: str) -> None:
        """Let the blocked reader through (it reads `text`), then put a
        regular file back so that later reads do not block."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # nobody is reading
            fd = -1
        if fd >= 0:
            os.write(fd, text.encode())
            os.close(fd)
        regular = self.path.with_name(".members.new")
        regular.write_text(text)
        os.replace(regular, self.path)


@pytest.fixture
def fifo(root: Path) -> Iterator[Callable[[], Fifo]]:
    made: list[Fifo] = []

    def make() -> Fifo:
        made.append(Fifo(root / ".members"))
        return made[-1]

    yield make
    for f in made:  # never leave a worker blocked behind a failed test
        f.answer(QUORATE)


def test_a_leader_whose_pmxcfs_holds_a_read_steps_down_once_and_resumes_after(
        root: Path, fifo: Callable[[], Fifo]) -> None:
    e = PmxcfsElection(root, "pve1", retry_interval=5.0, read_deadline=0.2)
    assert e.tick(1000.0) == "became leader (lock acquired)"
    before = _worker_threads(e.calls.name)
    held = fifo()

    said = e.tick(1005.0)
    assert said == (f"stepped down: pmxcfs does not answer (read {root}/.members: "
                    "no answer within 0.2 s)")
    assert not e.is_leader
    assert e.calls.outstanding == f"read {root}/.members"
    # Later ticks, a confirm and describe while the read is still held: no
    # second sentence, no second blocked call, nothing claims leadership.
    assert [e.tick(1005.0 + 5 * i) for i in range(1, 4)] == [None, None, None]
    assert e.confirm(1020.0) is False
    assert e.describe() == "standby (leader: unknown)"
    assert not _worker_threads(e.calls.name) - before  # no second worker started
    assert e.calls.outstanding == f"read {root}/.members"

    held.answer(QUORATE)
    _until("the held read to return", lambda: e.calls.outstanding is None)
    assert e.tick(1025.0) == "became leader (resumed the lock this node holds)"
    assert e.is_leader


def test_a_standby_says_once_that_pmxcfs_does_not_answer_and_tries_nothing(
        root: Path, fifo: Callable[[], Fifo]) -> None:
    held = fifo()
    e = PmxcfsElection(root, "pve1", retry_interval=5.0, read_deadline=0.2)
    assert e.tick(1000.0) == (f"standby: pmxcfs does not answer (read {root}/.members: "
                              "no answer within 0.2 s)")
    assert e.tick(1005.0) is None
    assert not (root / "priv" / "lock" / "pve-balancer").exists()
    held.answer(QUORATE)
    _until("the held read to return", lambda: e.calls.outstanding is None)
    assert e.tick(1010.0) == "became leader (lock acquired)"


def test_release_does_not_wait_for_a_held_call(root: Path, fifo: Callable[[], Fifo]) -> None:
    """An orderly stop while pmxcfs holds requests: the lock stays (it
    expires), the stop is not held up."""
    e = PmxcfsElection(root, "pve1", read_deadline=0.2)
    assert e.tick(1000.0) == "became leader (lock acquired)"
    fifo()
    assert e.tick(1010.0) is not None
    e.release()
    assert e.last_release.startswith("lock left in place: pmxcfs does not answer (read ")
    assert (root / "priv" / "lock" / "pve-balancer").is_dir()


def test_bounded_calls_hand_back_values_and_errors() -> None:
    calls = BoundedCalls("test bounded calls")
    assert calls.call("add", lambda: 1 + 1, 5.0) == 2
    with pytest.raises(FileNotFoundError):
        calls.call("stat", lambda: os.stat("/nonexistent/pve"), 5.0)
    gate = threading.Event()
    with pytest.raises(NoAnswerError, match=r"wait: no answer within 0\.05 s"):
        calls.call("wait", gate.wait, 0.05)
    with pytest.raises(NoAnswerError, match="wait: no answer for") as earlier:
        calls.call("other", lambda: None, 5.0)
    assert earlier.value.earlier
    gate.set()
    _until("the held call to return", lambda: calls.outstanding is None)
    assert calls.call("after", lambda: "ok", 5.0) == "ok"
    assert _workers("test bounded calls") == 1


def test_deadlines_never_exceed_a_quarter_of_the_safety_bound(tmp_path: Path) -> None:
    e = PmxcfsElection(tmp_path, "pve1", renew_interval=2.0, safety_bound=5.0)
    assert (e.read_deadline, e.write_deadline) == (1.25, 1.25)
    e = PmxcfsElection(tmp_path, "pve1")
    assert (e.read_deadline, e.write_deadline) == (2.0, 15.0)
    with pytest.raises(ValueError, match="read_deadline"):
        PmxcfsElection(tmp_path, "pve1", read_deadline=0.0)


@pytest.mark.fuse
def test_a_renew_held_by_a_membership_change_steps_the_leader_down(tmp_path: Path) -> None:
    """The emulator's write stall: pve1 is cut, the cut lands 3 s later, and
    a renew in between blocks until then (then EPERM). With a write deadline
    shorter than the stall the leader steps down without waiting for it."""
    realism = Realism(quorum_loss_delay=3.0, write_stall=True)
    with running_emulator(tmp_path, manual_clock=False, realism=realism) as emu:
        e = PmxcfsElection(emu.mounts["pve1"], "pve1", renew_interval=10.0,
                           write_deadline=0.3)
        now = time.time()
        assert e.tick(now) == "became leader (lock acquired)"
        emu.set_quorate("pve1", False)
        said = e.tick(now + 10)
        assert said == (f"stepped down: pmxcfs does not answer (renew {e.lock.path}: "
                        "no answer within 0.3 s)")
        assert not e.is_leader
        assert e.tick(now + 20) is None  # the renew is still held: nothing new
        _until("the held renew to return", lambda: e.calls.outstanding is None)
        assert e.tick(now + 30) == "standby: node is not quorate"


def test_an_idle_worker_ends_and_the_next_call_starts_one() -> None:
    calls = BoundedCalls("test idle worker", idle=0.05)
    assert calls.call("one", lambda: 1, 5.0) == 1
    _until("the idle worker to end", lambda: _workers("test idle worker") == 0)
    assert calls.call("two", lambda: 2, 5.0) == 2


def test_the_configuration_source_shares_the_bound_and_keeps_what_is_in_force(
        root: Path, fifo: Callable[[], Fifo]) -> None:
    """The daemon gives the configuration source and the election one
    `BoundedCalls`: while pmxcfs holds a call, the configuration's stat
    gives up too and the configuration in force stays; afterwards a change
    of the file is read as usual."""
    calls = BoundedCalls("test shared calls")
    config = root / "balancer.yaml"
    config.write_text("interval: 7\n")
    source = ConfigSource(config, calls=calls)
    source.refresh(force=True)
    assert source.config is not None and source.config.interval == 7
    e = PmxcfsElection(root, "pve1", read_deadline=0.2, calls=calls)
    assert e.tick(1000.0) == "became leader (lock acquired)"
    held = fifo()
    assert e.tick(1005.0) is not None and not e.is_leader
    config.write_text("interval: 9\n")
    assert source.refresh() is False
    assert source.config.interval == 7
    held.answer(QUORATE)
    _until("the held read to return", lambda: calls.outstanding is None)
    assert source.refresh() is True
    assert source.config.interval == 9
