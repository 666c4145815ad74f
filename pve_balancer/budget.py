"""The time budget of one cycle, shared by all its API requests.

Why: a cycle is one round of election, sampling and maybe a migration, and
two other clocks run over it. The leader steps down when its last good
renew is older than the 60 s safety bound (renews happen between cycles),
and systemd kills the agent when it sends no WATCHDOG=1 for `WatchdogSec`
(60 s). With a slow API (9 s per answer) a term start used to chain ~9
requests into a 70-81 s cycle: the agent stepped down and resumed every
cycle, and under systemd it would have been killed in a loop.

So every cycle gets a `Budget` of `CYCLE_BUDGET` seconds from its start.
Each request's timeout is the smaller of the client's per-request cap and
what is left of the budget; a request that would have less than
`MIN_REQUEST` seconds is not sent, and a request cut off by the budget
(rather than by its own cap) ends the cycle. Both raise `BudgetSpentError`,
which is not a `pve.PveError` on purpose: nothing that tolerates a failed
request (a cached value kept, a warm-up skipped) may swallow it, the cycle
ends with "no action" and says why. A migrate POST is only sent when the
whole per-request cap is still left (`post_allowed`), so a POST is never
cut short by the budget (a cut POST may have started a migration).

Arithmetic (docs/operations.md, "Time budget"): 30 s budget + 5 s grace
for the election's and status file's pmxcfs calls = 35 s < 60 s safety
bound and < 60 s WatchdogSec; a renew is due every 10 s and happens at the
start of a cycle, so when the leader next looks its last good renew is at
most 10 s + one cycle (35 s) = 45 s old: < 60 s.
"""

from __future__ import annotations

from collections.abc import Callable

CYCLE_BUDGET = 30.0
"""Seconds all the API requests of one cycle may take together."""

CYCLE_GRACE = 5.0
"""What the rest of a cycle (election, config, status file) may add on top
of the budget before the cycle counts as late (`CYCLE_LIMIT`)."""

CYCLE_LIMIT = CYCLE_BUDGET + CYCLE_GRACE
"""A cycle that took longer than this did not complete in time: the
watchdog is not fed for it."""

MIN_REQUEST = 1.0
"""A request is not sent with less time than this left in the budget: its
answer could not arrive in time anyway."""


class BudgetSpentError(Exception):
    """The cycle's time budget is spent. `request` names the request that
    was cut off or not sent; `spent` is the time used so far."""

    def __init__(self, budget: float, spent: float, request: str, sent: bool) -> None:
        what = "cut off" if sent else "not sent"
        super().__init__(f"the cycle's {budget:.0f} s time budget is spent after "
                         f"{spent:.1f} s ({request} {what})")
        self.budget = budget
        self.spent = spent
        self.request = request
        self.sent = sent

    @property
    def sentence(self) -> str:
        """The journal sentence of a cycle that ended on this. Its wording
        does not name the request, so a slow API is one episode however the
        budget runs out (the request is in the `request` field)."""
        return (f"no action: the cycle's {self.budget:.0f} s time budget is spent; the PVE "
                "API answers slowly")


class Budget:
    """`seconds` from `start` by `now` (the agent's clock: virtual in the
    simulator). `None` as a budget means unlimited (`plan`, tools)."""

    def __init__(self, now: Callable[[], float], seconds: float = CYCLE_BUDGET,
                 start: float | None = None) -> None:
        self._now = now
        self.seconds = seconds
        self.start = now() if start is None else start
        self.requests = 0

    def spent(self) -> float:
        return max(0.0, self._now() - self.start)

    def remaining(self) -> float:
        return self.seconds - self.spent()

    def timeout(self, cap: float, request: str) -> float:
        """The timeout for the next request: min(cap, what is left); raises
        `BudgetSpentError` when less than `MIN_REQUEST` is left."""
        left = self.remaining()
        if left < MIN_REQUEST:
            raise BudgetSpentError(self.seconds, self.spent(), request, sent=False)
        self.requests += 1
        return min(cap, left)

    def cut_off(self, request: str) -> BudgetSpentError:
        """The error for a request whose budget-limited timeout expired."""
        return BudgetSpentError(self.seconds, self.spent(), request, sent=True)

    def post_allowed(self, cap: float) -> bool:
        """Whether a request may still get its whole `cap` (a migrate POST
        must never be cut short by the budget)."""
        return self.remaining() >= cap
