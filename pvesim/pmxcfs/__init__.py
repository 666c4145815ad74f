"""pmxcfs emulator: a FUSE file system with one mount per simulated node over
one shared in-memory tree, enforcing the lock, lifetime and quorum rules of
Proxmox VE's cluster file system (see docs/election.md).

Start it from Python with `PmxcfsEmulator` or from a shell with
`python -m pvesim.pmxcfs`.
"""

from pvesim.pmxcfs.harness import EmulatorError, PmxcfsEmulator, cleanup_mounts, fuse_available
from pvesim.pmxcfs.tree import (
    DEFAULT_LIFETIME,
    INSTANT,
    REALISTIC,
    ClusterTree,
    EmulatorClock,
    Realism,
)

__all__ = ["DEFAULT_LIFETIME", "INSTANT", "REALISTIC", "ClusterTree", "EmulatorClock",
           "EmulatorError", "PmxcfsEmulator", "Realism", "cleanup_mounts", "fuse_available"]
