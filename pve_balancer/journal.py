"""Logging: journald with structured fields under systemd, plain stderr
lines elsewhere.

Every cycle's sentence is logged with fields an operator can filter on:
`journalctl -u pve-balancer PVE_BALANCER_MODE=cpu` or
`PVE_BALANCER_VMID=101`. Outside journald the same fields are simply not
shown; the sentence already carries them in words.

Two filters sit on the handler `setup_logging` installs, so they hold for
every line whatever module logs it:
- `DisplaySafe` escapes the message, the fields and the traceback
  (`display.display_safe`): names and error bodies from the API can never
  forge a line or send a terminal escape;
- `RepeatLimiter` lets a warning of the API parsers and of the status
  writer through once per `REPEAT_WINDOW` per message kind, with a count of
  the ones held back: a broken resource entry is reported, not 114 times in
  12 s. (Cycle sentences are told as episodes by the daemon, `episodes`.)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

from .display import display_safe, display_safe_block
from .episodes import duration

FIELD_PREFIX = "PVE_BALANCER_"
IDENTIFIER = "pve-balancer"
REPEAT_WINDOW = 600.0
"""Seconds in which a repeated warning of a limited logger is logged once."""
LIMITED_LOGGERS = ("pve_balancer.pve", "pve_balancer.status")
"""Loggers whose warnings repeat by nature: they are about data read or
written every cycle."""


def under_systemd() -> bool:
    """Started by systemd with output going to the journal."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def fields(**values: object) -> dict[str, str]:
    """`extra=` for a log call: PVE_BALANCER_<NAME>=value, empty values left out."""
    return {f"{FIELD_PREFIX}{k.upper()}": display_safe(v) for k, v in values.items()
            if v is not None and v != ""}


class DisplaySafe(logging.Filter):
    """Escapes what a record will show: the message (formatted once here),
    the PVE_BALANCER_* fields and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = display_safe(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = display_safe_block(record.exc_text)
        for key, value in list(vars(record).items()):
            if key.startswith(FIELD_PREFIX):
                setattr(record, key, display_safe(value))
        return True


class RepeatLimiter(logging.Filter):
    """One WARNING-or-worse record per message kind (its logger and format
    string) per `window` seconds from the `loggers` named; the next one
    after the window says how many were held back."""

    def __init__(self, window: float = REPEAT_WINDOW,
                 loggers: tuple[str, ...] = LIMITED_LOGGERS,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.window = window
        self.loggers = loggers
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def _limited(self, name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in self.loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._limited(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        held = int(seen[1]) if seen is not None else 0
        self._seen[key] = [now, 0]
        if held:
            record.msg = (f"{record.getMessage()} ({held} more like it in the last "
                          f"{duration(self.window)})")
            record.args = None
        return True


def _guard(handler: logging.Handler) -> logging.Handler:
    handler.addFilter(RepeatLimiter())
    handler.addFilter(DisplaySafe())
    return handler


class _PlainFormatter(logging.Formatter):
    """stderr lines; timestamps only when not under systemd (journald adds its own)."""

    def __init__(self, timestamps: bool) -> None:
        fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "%(levelname)s %(message)s"
        super().__init__(fmt)


def setup_logging(verbose: int = 0, *, journal: bool | None = None) -> str:
    """Configure the root logger once; returns "journal" or "stderr"."""
    level = logging.DEBUG if verbose >= 1 else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    # proxmoxer logs every request at INFO; that is debug detail for us.
    logging.getLogger("proxmoxer").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    use_journal = under_systemd() if journal is None else journal
    if use_journal:
        try:
            from systemd.journal import JournalHandler  # noqa: PLC0415 - optional dependency

            root.addHandler(_guard(JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)))
            return "journal"
        except ImportError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter(timestamps=not under_systemd()))
    root.addHandler(_guard(handler))
    return "stderr"


def log_sentence(logger: logging.Logger, sentence: str, values: Mapping[str, object],
                 level: int = logging.INFO, error: BaseException | None = None) -> None:
    """One journal line; with `error`, its traceback goes into the same entry.
    (No arguments, so `%` in the sentence is printed as it is.)"""
    logger.log(level, sentence, extra=fields(**values), exc_info=error)
