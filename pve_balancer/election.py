"""Leader election on the pmxcfs lock `/etc/pve/priv/lock/pve-balancer`.

The only module that knows pmxcfs lock semantics (docs/election.md):
- take the lock with `mkdir` (EEXIST: someone holds it);
- renew with `utime(lock, (0, now))` every `renew_interval`; pmxcfs accepts
  it only from the node that created or last renewed the lock and only if
  the mtime does not go back, so the time written is never ahead of `now`;
- a standby that finds the lock held first tries that renew (it succeeds
  when this very node holds the lock, e.g. after an agent restart, so
  leadership resumes at once), then sends an unlock request
  `utime(lock, (0, 0))` - pmxcfs deletes the lock only once it has been
  unchanged for its lifetime (120 s) - and tries `mkdir` again;
- the leader steps down at once when a renew fails, when its node is not
  quorate (`.members`), or when its last good renew is older than
  `safety_bound` (60 s, half the lifetime: it stops acting well before any
  other node could take the lock);
- `release()` on an orderly stop removes the lock with `rmdir` when a renew
  proves this node holds it (rmdir has no owner check).

Every syscall error is turned into a role and a sentence; nothing here
raises out of `tick`, `confirm`, `release` or `describe`. Every file-system
call the election makes is bounded (`BoundedCalls`): a pmxcfs that is
stopping or hung holds requests on its mount without answering, and a
leader must not sit in such a call while it believes it leads. When a call
does not answer in time the leader steps down and says "pmxcfs does not
answer" once; the call keeps waiting on its own thread, and no second one is
started until it returns.

The lock protocol itself (`PmxcfsLock`) and the reading of `.members`
(`read_membership`) live here too, and `setup` uses them for its own lock:
pmxcfs's rules are spelled out in one place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from .bounded import READ_DEADLINE, BoundedCalls, NoAnswerError
from .paths import LEADER_LOCK_NAME, PveRoot
from .status import is_stale, read_status

# Ticks are scheduled at the interval; a tick that arrives a hair early
# (timer jitter) must not skip a whole interval.
_EARLY_SLACK = 0.1
TAKEOVER_PAUSES = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
"""On a cluster of 3+ nodes pmxcfs deletes an expired lock in a second
message round after the unlock request returns (the lowest-id node answers
the request with an unlock message): 2.8-3.3 ms on an idle pmxcfs 9.1.6,
more than 75 ms on a loaded one. So a mkdir right after the request can
still see EEXIST: retry after these pauses (315 ms in all) before waiting a
whole retry interval."""
WRITE_DEADLINE = 15.0
"""Seconds a mkdir, renew or unlock request may take: a write during a
membership change legitimately blocks until corosync settles (~8 s on 3
nodes, then it proceeds on the majority or fails with EPERM on a cut
node), so writes get more time than reads, still far below the safety
bound. Both deadlines are capped at a quarter of the safety bound."""

_T = TypeVar("_T")


class _Now(Protocol):
    def now(self) -> float: ...


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno)) if exc.errno else str(exc)


class PmxcfsLock:
    """One pmxcfs lock directory and the operations pmxcfs gives it
    (docs/election.md): take it with `mkdir`, renew it with `utime` to now
    (accepted only from the node that holds it), ask pmxcfs to drop it once
    it has been unchanged for its lifetime with `utime` to 0, release it with
    `rmdir` (no owner check: prove ownership with a renew first)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def take(self) -> bool:
        """True when this call created the lock; False when it is held.
        Other errors (no quorum: EACCES) raise `OSError`."""
        try:
            os.mkdir(self.path)
        except FileExistsError:
            return False
        return True

    def renew(self, now: float) -> str | None:
        """Renew with the current whole second (never ahead of `now`: pmxcfs
        refuses an mtime older than the stored one); the errno name on
        failure, None on success."""
        try:
            os.utime(self.path, (0, int(now)))
        except OSError as exc:
            return _errname(exc)
        return None

    def request_unlock(self) -> None:
        """Ask pmxcfs to delete the lock if it has expired. The answer's
        errno means nothing (EACCES both when refused and when it worked)."""
        with contextlib.suppress(OSError):
            os.utime(self.path, (0, 0))

    def take_if_expired(self, pauses: tuple[float, ...] = TAKEOVER_PAUSES) -> bool:
        """Send an unlock request, then try to take the lock, briefly again
        after each of `pauses` (the deletion may land just after the
        request returns). False when it is still held."""
        self.request_unlock()
        for pause in (0.0, *pauses):
            if pause:
                time.sleep(pause)
            if self.take():
                return True
        return False

    def unreadable(self) -> str | None:
        """The errno name when the lock directory cannot be looked up
        (pmxcfs stopped: an empty mount point; crashed: ENOTCONN)."""
        try:
            os.stat(self.path.parent)
        except OSError as exc:
            return _errname(exc)
        return None

    def release(self) -> None:
        """Remove the lock (raises `OSError`, e.g. ENOENT when it is gone)."""
        os.rmdir(self.path)


@dataclass(frozen=True)
class Membership:
    """What `.members` says of this node's cluster: `quorate` is None when
    the file cannot be read (then `problem` says why). A node that is not in
    a cluster (pmxcfs in local mode, no `cluster` section) is quorate."""

    quorate: bool | None
    problem: str = ""


def read_membership(path: Path) -> Membership:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Membership(None, f"{path} is missing (pve-cluster not running)")
    except (OSError, ValueError) as exc:
        return Membership(None, f"{path} is unreadable: {exc}")
    if not isinstance(doc, dict):
        return Membership(None, f"{path} does not hold a JSON object")
    cluster = doc.get("cluster")
    if not isinstance(cluster, dict):
        return Membership(True)
    try:
        return Membership(bool(int(cluster.get("quorate", 0))))
    except (TypeError, ValueError):
        return Membership(None, f"{path}: cluster.quorate is not a number")


class PmxcfsElection:
    """`leadership.Election` on a pmxcfs lock directory.

    `pve_root` is the node's /etc/pve (its own mount), `node` this node's
    name. `tick(now)` is called once per agent cycle; standby attempts
    happen at most every `retry_interval`, renews every `renew_interval`.
    Times are unix seconds of the node's clock (what pmxcfs stamps mtimes
    with). `clock`, when given, lets `is_leader` expire by itself between
    ticks once the safety bound has passed.
    """

    def __init__(self, pve_root: Path, node: str, renew_interval: float = 10.0,
                 safety_bound: float = 60.0, clock: _Now | None = None,
                 retry_interval: float = 5.0, lock_name: str = LEADER_LOCK_NAME,
                 read_deadline: float = READ_DEADLINE,
                 write_deadline: float = WRITE_DEADLINE,
                 calls: BoundedCalls | None = None) -> None:
        if not node:
            raise ValueError("node name must not be empty")
        if renew_interval <= 0 or retry_interval <= 0:
            raise ValueError("renew_interval and retry_interval must be positive")
        if safety_bound <= renew_interval:
            raise ValueError(f"safety_bound ({safety_bound} s) must exceed renew_interval "
                             f"({renew_interval} s)")
        if read_deadline <= 0 or write_deadline <= 0:
            raise ValueError("read_deadline and write_deadline must be positive")
        paths = PveRoot(Path(pve_root))
        self.node = node
        self.renew_interval = float(renew_interval)
        self.safety_bound = float(safety_bound)
        self.retry_interval = float(retry_interval)
        self.clock = clock
        # A call may never outlast a quarter of the safety bound: the leader
        # must have stepped down long before another node could lead.
        self.read_deadline = min(float(read_deadline), self.safety_bound / 4)
        self.write_deadline = min(float(write_deadline), self.safety_bound / 4)
        # Shared with the configuration source in the daemon (cli.py): one
        # held request on /etc/pve is enough to know pmxcfs does not answer.
        self.calls = calls if calls is not None else BoundedCalls()
        self.lock = PmxcfsLock(paths.lock_dir / lock_name)
        self.members_path = paths.members
        self.status_path = paths.status
        self._leading = False
        self._last_renew: float | None = None  # `now` of the last good mkdir/renew
        self._last_attempt: float | None = None
        self._last_now: float | None = None
        self._state: str | None = None  # what the last sentence said
        self._pending: list[str] = []  # step-downs found by confirm(), told by tick()
        self.last_release = ""  # outcome of release(), for the journal

    # ------------------------------------------------------------ protocol
    @property
    def is_leader(self) -> bool:
        if not self._leading or self._last_renew is None:
            return False
        if self.clock is not None:
            try:
                return self.clock.now() - self._last_renew <= self.safety_bound
            except Exception:
                return False
        return True

    @property
    def last_renew(self) -> float | None:
        """`now` of the last successful take or renew (None before any)."""
        return self._last_renew

    def tick(self, now: float) -> str | None:
        try:
            said = self._tick(now)
        except NoAnswerError as exc:
            said = self._unanswered(exc)
        except Exception as exc:  # never let a cycle die here
            self._leading = False
            said = self._say("error", f"standby: election error: {exc!r}")
        pending, self._pending = self._pending, []
        parts = [*pending, said] if said else pending
        return "; ".join(parts) if parts else None

    def confirm(self, now: float) -> bool:
        try:
            if not self._leading or self._last_renew is None:
                return False
            self._last_now = now
            if self._quorate() is False:
                self._pending.append(self._step_down("no-quorum", "node lost quorum"))
                return False
            if now - self._last_renew > self.safety_bound:
                self._pending.append(self._step_down("safety", self._safety_text(now)))
                return False
            problem = self._renew(now)
            if problem:
                self._pending.append(self._step_down("renew-failed",
                                                     f"renew failed ({problem})"))
                return False
            return True
        except NoAnswerError as exc:
            said = self._unanswered(exc)
            if said:
                self._pending.append(said)
            return False
        except Exception as exc:
            self._leading = False
            self._pending.append(f"stepped down: election error: {exc!r}")
            return False

    def release(self) -> None:
        """Remove the lock if this node holds it, proved by a renew first:
        rmdir has no owner check, and a lock this node still holds after a
        step-down or a restart should not make the others wait a lifetime."""
        try:
            was_leading, self._leading = self._leading, False
            if was_leading:
                self._state = "released"
            now = self.clock.now() if self.clock is not None else self._last_now
            if now is None:
                self.last_release = "never ticked; nothing to release"
                return
            problem = self._renew(now)
            if problem:
                self.last_release = (
                    f"lock left in place: the renew before rmdir failed ({problem})"
                    if was_leading else "this node does not hold the lock; nothing to release")
                return
            self._write("rmdir", self.lock.release)
            self.last_release = "lock released"
        except NoAnswerError as exc:
            self.last_release = f"lock left in place: pmxcfs does not answer ({exc})"
        except OSError as exc:
            self.last_release = f"lock not released: rmdir failed ({_errname(exc)})"
        except Exception as exc:
            self.last_release = f"lock not released: {exc!r}"

    def describe(self) -> str:
        try:
            if self.is_leader:
                return "leader"
            if self._state == "no-quorum":
                return "standby (no quorum)"
            return f"standby (leader: {self._published_leader()})"
        except Exception:
            return "standby (leader: unknown)"

    # ------------------------------------------------------------- internals
    def _read(self, what: str, fn: Callable[[], _T]) -> _T:
        """`fn` (a stat or read named by `what`) within the read deadline."""
        return self.calls.call(what, fn, self.read_deadline)

    def _write(self, what: str, fn: Callable[[], _T]) -> _T:
        """`fn` (a write to the lock, `what` names it) within the write deadline."""
        return self.calls.call(f"{what} {self.lock.path}", fn, self.write_deadline)

    def _unanswered(self, exc: NoAnswerError) -> str | None:
        """A leader steps down at once; either role says it once."""
        text = f"pmxcfs does not answer ({exc})"
        if self._leading:
            return self._step_down("unanswered", text)
        return self._say("unanswered", f"standby: {text}")

    def _tick(self, now: float) -> str | None:
        self._last_now = now
        unreadable = self._read(f"stat {self.lock.path.parent}", self.lock.unreadable)
        if unreadable:  # pmxcfs is not mounted: nothing can be known or done
            text = f"cannot read {self.lock.path.parent} ({unreadable}); is pmxcfs running?"
            if self._leading:
                return self._step_down("unreadable", text)
            return self._say("unreadable", f"standby: {text}")
        quorate = self._quorate()
        if self._leading:
            assert self._last_renew is not None
            if quorate is False:
                return self._step_down("no-quorum", "node lost quorum")
            if now - self._last_renew > self.safety_bound:
                return self._step_down("safety", self._safety_text(now))
            if now - self._last_renew >= self.renew_interval * (1 - _EARLY_SLACK) or \
                    now < self._last_renew:
                problem = self._renew(now)
                if problem:
                    return self._step_down("renew-failed", f"renew failed ({problem})")
            return None
        if quorate is False:
            return self._say("no-quorum", "standby: node is not quorate")
        if self._last_attempt is not None and \
                0 <= now - self._last_attempt < self.retry_interval * (1 - _EARLY_SLACK):
            return None
        self._last_attempt = now
        return self._try_acquire(now)

    def _try_acquire(self, now: float) -> str | None:
        try:
            if self._write("mkdir", self.lock.take):
                return self._become_leader(now, "became leader (lock acquired)")
            # Held. By this node (agent restarted)? Then a renew succeeds.
            if self._renew(now) is None:
                return self._become_leader(now,
                                           "became leader (resumed the lock this node holds)")
            # By another node: ask pmxcfs to drop it if it has expired, retry.
            if self._write("unlock request and mkdir", self.lock.take_if_expired):
                return self._become_leader(now, "became leader (lock acquired after it expired)")
            return self._say("held", "standby: lock held by another node")
        except OSError as exc:
            return self._say(f"mkdir-{exc.errno}",
                             f"standby: cannot take the lock: mkdir failed ({_errname(exc)})")

    def _renew(self, now: float) -> str | None:
        """Renew the lock; the error name on failure."""
        problem = self._write("renew", lambda: self.lock.renew(now))
        if problem is None:
            self._last_renew = now
        return problem

    def _become_leader(self, now: float, sentence: str) -> str | None:
        self._leading = True
        self._last_renew = now
        return self._say("leader", sentence)

    def _step_down(self, why: str, text: str) -> str:
        self._leading = False
        # Stay standby for one retry interval before trying again, so one
        # cycle never says "stepped down; became leader".
        self._last_attempt = self._last_now
        self._state = why
        return f"stepped down: {text}"

    def _safety_text(self, now: float) -> str:
        assert self._last_renew is not None
        return (f"last good renew {now - self._last_renew:.0f} s ago exceeds the "
                f"{self.safety_bound:.0f} s safety bound")

    def _say(self, state: str, sentence: str) -> str | None:
        """The sentence only when the role or its reason changed."""
        if state == self._state:
            return None
        self._state = state
        return sentence

    def _quorate(self) -> bool | None:
        """None when `.members` cannot be read (the syscalls will then tell)."""
        path = self.members_path
        return self._read(f"read {path}", lambda: read_membership(path)).quorate

    def _published_leader(self) -> str:
        doc = self._read(f"read {self.status_path}", lambda: read_status(self.status_path))
        if not doc:
            return "unknown"
        leader = doc.get("leader")
        if not isinstance(leader, str) or not leader or leader == self.node:
            return "unknown"
        if self._last_now is not None and is_stale(doc, self._last_now):
            return f"unknown; last seen {leader}"
        return leader
