"""Fencing: the last check before a migrate POST.

Why: leadership is a pmxcfs lock that another node may take once it has
been unchanged for its lifetime (120 s). The leader renews it, and steps
down when its last good renew is older than the 60 s safety bound, but
those checks run at the start of a cycle. A process that stalls between
its last check and the POST (SIGSTOP, a frozen VM, swap) past the lock's
lifetime resumes and POSTs while another node already leads: two leaders,
two overlapping migrations (seen at lab timing with a 16 s SIGSTOP).

`check` is called immediately before the POST, after every other request
of the migration (the version probe) has been made: it re-confirms the
lock with a renew (`Election.confirm`, which also checks quorum and the
safety bound) and then reads the clock once more. If more than
`FENCE_BOUND` seconds passed since that renew's time, the process stalled
inside the confirmation and the POST is not sent.

Arithmetic (docs/election.md, "Fencing"): the renew writes the lock's mtime
as the whole second of `now` (up to 1 s early); the POST leaves at most
`FENCE_BOUND` (2 s) later and PVE has it within the request's cap (10 s,
`pve.DEFAULT_TIMEOUT`; a later answer makes the migration "unconfirmed"
and followed, never repeated). 1 + 2 + 10 = 13 s after the renew, while
no other node can take the lock before 120 s after it: 107 s of margin,
more than the 60 s safety bound itself. At lab timing (10 s lifetime) a
POST's transit is milliseconds, so 1 + 2 s plus transit stays within it.
What no check in this process can fence is a stall in the microseconds
between this last clock read and the request leaving the socket.
"""

from __future__ import annotations

from collections.abc import Callable

from .leadership import Election

FENCE_BOUND = 2.0
"""Seconds that may pass between the renew that confirms leadership and the
migrate POST."""


class FencedError(Exception):
    """Leadership could not be confirmed right before the POST; the
    migration was not started. The message says why."""


def check(election: Election, now: Callable[[], float], bound: float = FENCE_BOUND) -> None:
    """Raise `FencedError` unless this agent may POST a migration right now."""
    confirmed_at = now()
    if not election.confirm(confirmed_at):
        raise FencedError("leadership could not be confirmed")
    renewed = getattr(election, "last_renew", None)
    anchor = renewed if isinstance(renewed, int | float) else confirmed_at
    late = now() - float(anchor)
    if late > bound:
        raise FencedError(f"{late:.1f} s passed between the lock's renew and the POST "
                     f"(more than {bound:g} s: the process stalled)")
