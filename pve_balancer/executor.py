"""Following one migration the agent started, until it is really over.

A plain migration is one task: its UPID runs, then stops with an exit
status. An HA-managed guest is different: `POST .../migrate` answers with a
`hamigrate` task that ends at once, and the HA manager starts the real
`qmigrate` some seconds later. The move is over only when the guest is on
the target (or that real task ended). `step` is the whole state machine: a
function of what the agent saw this cycle, so it is tested without an API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .model import Mode, Snapshot, Task

HA_START_TIMEOUT = 300.0
"""Seconds the HA manager gets to start moving a guest after `hamigrate`
ended; after that the request is considered lost (PVE's CRM acts within
one or two 10 s rounds, a busy cluster may take longer)."""

UNCONFIRMED_TIMEOUT = 30.0
"""Seconds to look for the task of a migrate POST whose answer was lost
(timeout, reset connection) before concluding it never started."""

MAX_STATUS_ERRORS = 12
"""Consecutive failed task-status reads before the agent stops following
(the cluster-wide "migration running" guard still holds it back)."""


@dataclass
class InFlight:
    """A migration this agent started and has not yet seen end."""

    vmid: int
    name: str
    source: str
    target: str
    mode: Mode
    upid: str
    ha: bool
    started: float
    real_upid: str | None = None
    handed_over: bool = False  # HA: the hamigrate task ended OK
    status_errors: int = 0
    unconfirmed: bool = False  # the POST's answer was lost: no UPID known

    @property
    def api_started(self) -> float | None:
        """Start of our task by the API's clock (from the UPID), so tasks in
        `/cluster/tasks` are compared on one clock, never with ours."""
        parts = self.upid.split(":")
        try:
            return float(int(parts[4], 16))
        except (IndexError, ValueError):
            return None

    @property
    def watch_upid(self) -> str | None:
        """The task whose status to read this cycle (None: watch the guest)."""
        if self.real_upid is not None:
            return self.real_upid
        return None if self.handed_over else self.upid

    def label(self) -> str:
        return f"vm {self.vmid} ({self.name}) {self.source} → {self.target}"


@dataclass(frozen=True)
class Progress:
    """Where the migration stands after this cycle."""

    done: bool
    ok: bool = False
    sentence: str = ""
    exitstatus: str = ""


def step(flight: InFlight, task: Task | None, error: str | None, snapshot: Snapshot,
         tasks: Sequence[Task], now: float) -> Progress:
    """Advance `flight` with this cycle's observations.

    `task` is the status of `flight.watch_upid` (None when nothing was asked
    or the read failed, then `error` says why); `tasks` is `/cluster/tasks`.
    """
    elapsed = now - flight.started
    if error is not None:
        flight.status_errors += 1
        if flight.status_errors >= MAX_STATUS_ERRORS:
            return Progress(True, False, f"lost track of the migration of {flight.label()} "
                            f"after {elapsed:.0f} s: {error}", "unknown")
        return Progress(False, sentence=f"migration of {flight.label()}: task status "
                        f"unavailable ({error})")
    flight.status_errors = 0

    if task is not None and task.running:
        what = "HA migration" if flight.ha else "migration"
        return Progress(False, sentence=f"{what} of {flight.label()} running for {elapsed:.0f} s")

    if task is not None:
        ok = task.exitstatus == "OK"
        if flight.ha and flight.real_upid is None:
            if not ok:
                return Progress(True, False, f"HA migration request for {flight.label()} failed "
                                f"after {elapsed:.0f} s: {task.exitstatus}",
                                task.exitstatus or "unknown")
            flight.handed_over = True
            return _watch_guest(flight, snapshot, tasks, now)
        status = task.exitstatus or "unknown"
        via = " via HA" if flight.ha else ""
        what = "HA migration" if flight.ha else "migration"
        if ok:
            return Progress(True, True, f"migrated {flight.label()} in {elapsed:.0f} s{via} (OK)",
                            status)
        return Progress(True, False, f"{what} of {flight.label()} failed after {elapsed:.0f} s:"
                        f" {status}", status)

    return _watch_guest(flight, snapshot, tasks, now)


def _watch_guest(flight: InFlight, snapshot: Snapshot, tasks: Sequence[Task],
                 now: float) -> Progress:
    """HA case after the request was handed over: find the real move."""
    elapsed = now - flight.started
    vmid = str(flight.vmid)
    anchor = flight.api_started
    # Without an anchor (the POST's answer was lost) only a running task of
    # the guest can be ours; finished ones could be anybody's, from any time.
    mine = [t for t in tasks if t.kind == "qmigrate" and t.vmid == vmid
            and (t.running if anchor is None else t.starttime >= anchor - 1.0)]
    running = [t for t in mine if t.running]
    if running:
        flight.real_upid = running[0].upid
        return Progress(False, sentence=f"HA migration of {flight.label()} running for "
                        f"{elapsed:.0f} s")
    guest = next((g for g in snapshot.guests if g.vmid == flight.vmid), None)
    finished = sorted((t for t in mine if not t.running), key=lambda t: t.starttime)
    if finished and finished[-1].exitstatus not in (None, "OK"):
        status = finished[-1].exitstatus or "unknown"
        return Progress(True, False, f"HA migration of {flight.label()} failed after "
                        f"{elapsed:.0f} s: {status}", status)
    if guest is not None and guest.node == flight.target and guest.lock != "migrate":
        return Progress(True, True, f"migrated {flight.label()} in {elapsed:.0f} s via HA (OK)",
                        "OK")
    where = guest.node if guest is not None else "nowhere"
    if flight.unconfirmed and not flight.ha:
        if elapsed > UNCONFIRMED_TIMEOUT:
            return Progress(True, False, f"migration of {flight.label()} did not start (no task "
                            f"within {UNCONFIRMED_TIMEOUT:.0f} s; guest is on {where})",
                            "not started")
        return Progress(False, sentence=f"looking for the task of the migration of "
                        f"{flight.label()} (the API's answer was lost, {elapsed:.0f} s)")
    if elapsed > HA_START_TIMEOUT:
        return Progress(True, False, f"HA manager did not move {flight.label()} within "
                        f"{HA_START_TIMEOUT:.0f} s (guest is on {where})", "timeout")
    return Progress(False, sentence=f"waiting for the HA manager to move {flight.label()} "
                    f"({elapsed:.0f} s)")
