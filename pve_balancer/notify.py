"""sd_notify: tell systemd that the agent is ready, alive, what it is doing,
and that it is stopping (the unit is `Type=notify` with a watchdog).

python3-systemd's `systemd.daemon.notify` is used when it is installed;
otherwise the protocol is simple enough to speak directly: one datagram to
the AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading '@' means an
abstract socket). Outside systemd (no `$NOTIFY_SOCKET`) every call is a
no-op, so the daemon never has to ask where it runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _systemd_notify() -> Callable[[str], bool] | None:
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None

    def send(state: str) -> bool:
        return bool(daemon.notify(state))

    return send


def socket_notify(state: str, address: str | None = None) -> bool:
    """Send `state` to `$NOTIFY_SOCKET` (or `address`) as one datagram.
    Returns False when there is no socket to talk to or sending failed."""
    target = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]
    elif not target.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is neither a path nor abstract; ignored", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", address or os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


class Notifier:
    """The few messages the daemon sends. `STATUS=` is only re-sent when it
    changes, so a quiet cluster costs one datagram per cycle (WATCHDOG)."""

    def __init__(self, send: Callable[[str], bool] | None = None) -> None:
        if send is None:
            send = _systemd_notify() or socket_notify
        self._send = send
        self._status: str | None = None

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        line = " ".join(text.split())  # one line, as systemctl shows it
        if line != self._status:
            self._status = line
            self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """Before re-reading the configuration; `ready()` says it is done.
        MONOTONIC_USEC lets systemd tell this reload from an earlier one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")
