"""Starting the pmxcfs emulator for tests (shared by tests/pmxcfs, the
election unit tests and the election integration tests).

FUSE tests never skip: on a machine without /dev/fuse or root they fail
with the reason, so a green run always means the rules were exercised.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pvesim.pmxcfs import PmxcfsEmulator, fuse_available

NODES = ("pve1", "pve2", "pve3")
LOCK = "priv/lock/pve-balancer"


def require_fuse() -> None:
    reason = fuse_available()
    if reason:
        pytest.fail(f"pmxcfs emulator tests need FUSE as root: {reason}", pytrace=False)


@contextmanager
def running_emulator(base: Path, **kwargs: Any) -> Iterator[PmxcfsEmulator]:
    require_fuse()
    kwargs.setdefault("manual_clock", True)
    emu = PmxcfsEmulator(base / "pve", kwargs.pop("nodes", NODES), **kwargs)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def errno_of(call: Callable[[], object]) -> str | None:
    """Run a syscall; the errno name it failed with, or None on success."""
    try:
        call()
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return None


def lock_of(emu: PmxcfsEmulator, node: str, name: str = "pve-balancer") -> Path:
    return emu.mounts[node] / "priv" / "lock" / name


def exists_anywhere(emu: PmxcfsEmulator, path_in_root: str) -> dict[str, bool]:
    return {n: os.path.exists(m / path_in_root) for n, m in emu.mounts.items()}
