"""Finding and removing the emulator's FUSE mounts, alive or left over
from a crashed process (no FUSE library needed for this)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

FSNAME_PREFIX = "pmxcfs-emu"


def mounted_fuse_paths(under: Path | None = None) -> list[Path]:
    """FUSE mounts of this emulator (by fsname), optionally below `under`."""
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        mnt = Path(fields[4].replace("\\040", " "))
        if not rfields[0].startswith("fuse") or not rfields[1].startswith(FSNAME_PREFIX):
            continue
        if under is None or mnt == under or under in mnt.parents:
            found.append(mnt)
    return found


def unmount(path: Path) -> bool:
    """Unmount a FUSE mount, alive or left over from a crash.

    `fusermount -u` first (clean; makes the serving loop return); if the
    mount is busy or the tool is missing, a lazy `umount -l` detaches it.
    Returns True when `path` is no longer a mount point.
    """
    for cmd in (["fusermount", "-u", "-q", str(path)], ["fusermount3", "-u", "-q", str(path)],
                ["umount", "-l", str(path)]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10, check=False)
        if path not in mounted_fuse_paths():
            return True
    return path not in mounted_fuse_paths()
