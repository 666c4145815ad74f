"""Logging: journald with structured fields under systemd, plain stderr
lines elsewhere.

Every cycle's sentence is logged with fields an operator can filter on:
`journalctl -u pve-balancer PVE_BALANCER_MODE=cpu` or
`PVE_BALANCER_VMID=101`. Outside journald the same fields are simply not
shown; the sentence already carries them in words.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

FIELD_PREFIX = "PVE_BALANCER_"
IDENTIFIER = "pve-balancer"


def under_systemd() -> bool:
    """Started by systemd with output going to the journal."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def fields(**values: object) -> dict[str, str]:
    """`extra=` for a log call: PVE_BALANCER_<NAME>=value, empty values left out."""
    return {f"{FIELD_PREFIX}{k.upper()}": str(v) for k, v in values.items()
            if v is not None and v != ""}


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

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER))
            return "journal"
        except ImportError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter(timestamps=not under_systemd()))
    root.addHandler(handler)
    return "stderr"


def log_sentence(logger: logging.Logger, sentence: str, values: Mapping[str, object],
                 level: int = logging.INFO, error: BaseException | None = None) -> None:
    """One journal line; with `error`, its traceback goes into the same entry."""
    logger.log(level, sentence.replace("%", "%%"), extra=fields(**values), exc_info=error)
