"""Next start time of a PVE backup job from its calendar-event schedule.

PVE computes `next-run` itself and lists it in `/cluster/backup`; the agent
prefers that value. This parser is the fallback for jobs that do not carry
it. It understands the subset operators actually write:

    "21:00"  "2:30"  "*-*-* 02:00"  "sat 02:00"  "mon..fri 22:30"
    "mon,wed,fri 03:15"  "*/15"  "*:0/20"  "0/2:00"  "hourly"  "daily"
    "weekly"  "minutely"

Anything else (explicit dates, monthly, seconds, `~`) raises
`ScheduleError`; the caller then treats the job conservatively.
Times are evaluated in the host's local time zone, as PVE does.
"""

from __future__ import annotations

import datetime as dt
import re

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_KEYWORDS = {
    "minutely": "*:*",
    "hourly": "*:00",
    "daily": "00:00",
    "weekly": "mon 00:00",
}


class ScheduleError(ValueError):
    """A schedule this parser does not understand (the message says why)."""


def _weekdays(spec: str) -> frozenset[int]:
    days: set[int] = set()
    for part in spec.split(","):
        if ".." in part:
            first, last = part.split("..", 1)
            if first not in WEEKDAYS or last not in WEEKDAYS:
                raise ScheduleError(f"unknown weekday range {part!r}")
            a, b = WEEKDAYS.index(first), WEEKDAYS.index(last)
            idx = a
            while True:
                days.add(idx)
                if idx == b:
                    break
                idx = (idx + 1) % 7
        elif part in WEEKDAYS:
            days.add(WEEKDAYS.index(part))
        else:
            raise ScheduleError(f"unknown weekday {part!r}")
    return frozenset(days)


def _field(spec: str, limit: int, what: str) -> tuple[int, ...]:
    """Values 0..limit-1 matched by one time field ("*", "5", "1,2",
    "*/15", "0/20", "8..17")."""
    values: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\*|\d+)(?:\.\.(\d+))?(?:/(\d+))?", part)
        if not m:
            raise ScheduleError(f"bad {what} field {part!r}")
        start_s, end_s, step_s = m.groups()
        start = 0 if start_s == "*" else int(start_s)
        open_end = limit - 1 if start_s == "*" or step_s else start
        end = int(end_s) if end_s is not None else open_end
        step = int(step_s) if step_s is not None else 1
        if step <= 0 or start >= limit or end >= limit or start > end:
            raise ScheduleError(f"{what} field {part!r} out of range")
        values.update(range(start, end + 1, step))
    return tuple(sorted(values))


def parse_schedule(schedule: str) -> tuple[frozenset[int], tuple[int, ...], tuple[int, ...]]:
    """(weekdays 0=Monday, hours, minutes) matched by `schedule`."""
    text = _KEYWORDS.get(schedule.strip().lower(), schedule.strip().lower())
    if not text:
        raise ScheduleError("empty schedule")
    tokens = text.split()
    days = frozenset(range(7))
    if tokens and re.match(r"^[a-z]", tokens[0]):
        days = _weekdays(tokens.pop(0))
    if tokens and "-" in tokens[0] and tokens.pop(0) != "*-*-*":
        raise ScheduleError("explicit dates are not supported")
    if len(tokens) != 1:
        raise ScheduleError(f"cannot read {schedule!r}")
    clock = tokens[0]
    if clock.count(":") > 1:
        raise ScheduleError("seconds are not supported")
    if ":" in clock:
        hour_s, minute_s = clock.split(":")
    else:
        # A single field is a minute specification ("*/15"), as in PVE.
        hour_s, minute_s = "*", clock
    return days, _field(hour_s, 24, "hour"), _field(minute_s, 60, "minute")


def next_start(schedule: str, after: float) -> float:
    """Unix time of the first start strictly after `after` (local time)."""
    days, hours, minutes = parse_schedule(schedule)
    start = dt.datetime.fromtimestamp(after).replace(second=0, microsecond=0)
    for offset in range(8):
        day = start + dt.timedelta(days=offset)
        if day.weekday() not in days:
            continue
        for hour in hours:
            for minute in minutes:
                candidate = day.replace(hour=hour, minute=minute)
                ts = candidate.timestamp()
                if ts > after:
                    return ts
    raise ScheduleError(f"{schedule!r} never fires")  # pragma: no cover - days non-empty
