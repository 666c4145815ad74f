"""The circuit breaker: stop migrating after repeated failed migrations.

Why: each failed migration puts its guest in cooldown, so nothing is
retried in a loop, but the next candidate is tried at once. When every
migration fails for a reason outside the guest (storage gone, a broken
target, migration network down) the agent used to start one failing live
migration after another: five in 104 s, each one copying memory over the
network for nothing and each one a risk for a production VM.

After `limit` failed migrations within `window` seconds the breaker opens:
the agent still decides, and says what it would do, but starts nothing.
It says so once, when it opens, and once when it closes again. It closes
when `window` seconds have passed since it opened, or when an operator
acts: `systemctl reload pve-balancer` (SIGHUP) or any change of
balancer.yaml. `limit` 0 turns the breaker off.

Pure: the agent tells it of failures and asks it before every POST; the
clock is the agent's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .episodes import duration


@dataclass
class Breaker:
    limit: int = 3
    window: float = 1800.0
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    opened_at: float | None = None

    def configure(self, limit: int, window: float) -> None:
        """New settings from balancer.yaml (failures so far are kept)."""
        self.limit = limit
        self.window = window

    def _prune(self, now: float) -> None:
        while self.failures and now - self.failures[0][0] > self.window:
            self.failures.popleft()

    def failed(self, now: float, what: str) -> str | None:
        """A migration failed (`what` says which and how). Returns the
        sentence that the breaker opened, when this failure opened it."""
        if self.limit <= 0:
            return None
        self.failures.append((now, what))
        self._prune(now)
        if self.opened_at is not None or len(self.failures) < self.limit:
            return None
        self.opened_at = now
        return (f"circuit breaker open: {len(self.failures)} migrations failed within "
                f"{duration(self.window)} (the last: {what}); starting none for "
                f"{duration(self.window)} or until `systemctl reload pve-balancer` "
                "(SIGHUP) or a change of balancer.yaml")

    def is_open(self, now: float) -> bool:
        return self.opened_at is not None and not self.expired(now)

    def expired(self, now: float) -> bool:
        return self.opened_at is not None and now - self.opened_at >= self.window

    def close_if_due(self, now: float) -> str | None:
        """Close after the window; the sentence that says so, once."""
        if self.opened_at is None or (self.limit > 0 and not self.expired(now)):
            return None
        opened, self.opened_at = self.opened_at, None
        self.failures.clear()
        return (f"circuit breaker closed after {duration(now - opened)}: migrations may "
                "start again")

    def reset(self, now: float, why: str) -> str | None:
        """An operator acted: close now and forget the failures. The sentence
        that says so when the breaker was open."""
        was_open = self.opened_at is not None
        self.opened_at = None
        self.failures.clear()
        if not was_open:
            return None
        return f"circuit breaker reset ({why}): migrations may start again"

    def describe(self, now: float) -> str:
        """What a cycle that would have migrated says while it is open."""
        assert self.opened_at is not None
        left = max(0.0, self.window - (now - self.opened_at))
        return (f"circuit breaker open ({len(self.failures)} failed migrations), "
                f"{duration(left)} left")
