"""PVE calendar events, the subset backup jobs use: when a schedule fires
next. Times are UTC, the simulated cluster's timezone."""

from __future__ import annotations

_DOW = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_ALIASES = {"daily": "00:00", "hourly": "*:00", "weekly": "mon 00:00"}


def parse_schedule(text: str) -> tuple[frozenset[int], frozenset[int] | None, int]:
    """The subset of PVE calendar events backup jobs commonly use:
    `[DOW[,DOW|DOW..DOW]] H[,H]:MM`, `*:MM`, `daily`, `hourly`, `weekly`.
    Returns (weekdays, hours or None for every hour, minute); times are UTC
    (the simulated cluster's timezone)."""
    s = _ALIASES.get(text.strip().lower(), text.strip().lower())
    parts = s.split()
    days = frozenset(range(7))
    if len(parts) == 2:
        dset: set[int] = set()
        for item in parts[0].split(","):
            if ".." in item:
                a, b = item.split("..", 1)
                if a not in _DOW or b not in _DOW:
                    raise ValueError(f"bad weekday range {item!r}")
                i, j = _DOW[a], _DOW[b]
                dset.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
            elif item in _DOW:
                dset.add(_DOW[item])
            else:
                raise ValueError(f"bad weekday {item!r}")
        days = frozenset(dset)
        parts = parts[1:]
    if len(parts) != 1 or ":" not in parts[0]:
        raise ValueError(f"unsupported schedule {text!r} (use e.g. 'sun 01:30', '21:00', '*:15')")
    hh, mm = parts[0].split(":", 1)
    try:
        minute = int(mm)
        hours = None if hh == "*" else frozenset(int(h) for h in hh.split(","))
    except ValueError:
        raise ValueError(f"unsupported schedule {text!r}") from None
    if not 0 <= minute < 60 or (hours is not None and any(not 0 <= h < 24 for h in hours)):
        raise ValueError(f"time out of range in schedule {text!r}")
    return days, hours, minute


def next_run(schedule: str, after: float) -> float:
    """First matching minute strictly after `after` (unix seconds, UTC)."""
    days, hours, minute = parse_schedule(schedule)
    t = (int(after) // 60 + 1) * 60
    for _ in range(8 * 24 * 60):
        if (t // 60) % 60 == minute:
            hour = (t // 3600) % 24
            dow = (t // 86400 + 3) % 7  # 1970-01-01 was a Thursday
            if (hours is None or hour in hours) and dow in days:
                return float(t)
            t += 3600
        else:
            t += 60
    raise ValueError(f"schedule {schedule!r} never fires")
