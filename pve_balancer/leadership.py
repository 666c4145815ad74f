"""The seam between the agent and whatever decides who leads.

The agent only ever talks to an `Election`: it ticks it once per cycle, asks
`is_leader` before sampling, and calls `confirm` immediately before starting
a migration. The pmxcfs lock (`election.PmxcfsElection`) is one
implementation; `AlwaysLeader` is the other, for a single agent that is the
only balancer by construction (tests, `plan`, a one-node lab).

Keeping this contract narrow is what lets the election change without the
policy or the executor noticing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Election(Protocol):
    """Who may act on the cluster right now.

    Implementations must be safe to call once per cycle from one thread and
    must never raise out of these methods: a storage error means "not leader",
    reported through the returned sentence, not an exception.
    """

    def tick(self, now: float) -> str | None:
        """Acquire, renew or give up leadership as due at `now`.

        Returns one sentence when the role changed (for the journal, e.g.
        "became leader" / "lost the leader lock: renew failed (EACCES)"),
        else None.
        """
        ...

    @property
    def is_leader(self) -> bool:
        """True while this agent may sample and act (as of the last tick)."""
        ...

    def confirm(self, now: float) -> bool:
        """Re-check, right before a POST, that leadership is still ours.

        False means: do not start the migration.
        """
        ...

    def release(self) -> None:
        """Give leadership up on an orderly stop so a standby takes over at
        once rather than after the lock's lifetime."""
        ...

    def describe(self) -> str:
        """Role for operators: "leader" or "standby (leader: pve2)"."""
        ...


class AlwaysLeader:
    """An election with one permanent winner.

    Used when exactly one agent runs (single-agent mode, `plan`, tests);
    `release` only records that the agent stopped so `describe` says so.
    """

    def __init__(self) -> None:
        self._released = False
        self._announced = False

    def tick(self, now: float) -> str | None:
        if self._released:
            return None
        if not self._announced:
            self._announced = True
            return "leading as the only balancer (no election)"
        return None

    @property
    def is_leader(self) -> bool:
        return not self._released

    def confirm(self, now: float) -> bool:
        return not self._released

    def release(self) -> None:
        self._released = True

    def describe(self) -> str:
        return "stopped" if self._released else "leader"
