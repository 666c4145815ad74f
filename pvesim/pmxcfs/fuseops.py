"""One node's view of the shared tree as fusepy operations.

Each mount gets its own `NodeMount` bound to a node name; all of them call
into the same `ClusterTree`, so a mkdir on pve1's mount is an EEXIST on
pve2's. This module only translates (paths, times in ns, file handles);
the rules live in `tree.py`.
"""

from __future__ import annotations

import errno
from typing import Any

from fuse import FuseOSError, Operations

from pvesim.pmxcfs.tree import ClusterTree


class NodeMount(Operations):  # type: ignore[misc]  # fusepy is untyped
    """fusepy operations for the mount of `node`.

    File handles are not used: every read and write goes by path, as the
    tree is small and in memory.
    """

    use_ns = True  # times arrive and leave in nanoseconds

    def __init__(self, tree: ClusterTree, node: str) -> None:
        if node not in tree.node_ids:
            raise ValueError(f"unknown node {node!r}")
        self.tree = tree
        self.node = node

    # reads
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self.tree.getattr(self.node, path)

    def readdir(self, path: str, fh: Any) -> list[str]:
        return self.tree.readdir(self.node, path)

    def readlink(self, path: str) -> str:
        return self.tree.readlink(self.node, path)

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        return self.tree.read(self.node, path, size, offset)

    def open(self, path: str, flags: int) -> int:
        self.tree.open(self.node, path, flags)
        return 0

    def opendir(self, path: str) -> int:
        self.tree.readdir(self.node, path)
        return 0

    def access(self, path: str, amode: int) -> None:
        self.tree.access(self.node, path, amode)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 32768, "f_bfree": 32000,
                "f_bavail": 32000, "f_files": 10000, "f_ffree": 9000, "f_namemax": 255}

    # writes
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self.tree.create(self.node, path)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        return self.tree.write(self.node, path, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        self.tree.truncate(self.node, path, length)

    def unlink(self, path: str) -> None:
        self.tree.unlink(self.node, path)

    def mkdir(self, path: str, mode: int) -> None:
        self.tree.mkdir(self.node, path)

    def rmdir(self, path: str) -> None:
        self.tree.rmdir(self.node, path)

    def rename(self, old: str, new: str) -> None:
        self.tree.rename(self.node, old, new)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        mtime = None if times is None else times[1] // 1_000_000_000
        self.tree.utimens(self.node, path, mtime)

    def chmod(self, path: str, mode: int) -> None:
        self.tree.chmod(self.node, path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.tree.chown(self.node, path, uid, gid)

    def flush(self, path: str, fh: Any) -> None:
        return None

    def release(self, path: str, fh: Any) -> None:
        return None

    def fsync(self, path: str, datasync: int, fh: Any) -> None:
        return None

    # pmxcfs has regular files and directories only; it has no symlink
    # operation at all (ENOSYS), and refuses links and device nodes
    def symlink(self, target: str, source: str) -> None:
        raise FuseOSError(errno.ENOSYS)

    def link(self, target: str, source: str) -> None:
        raise FuseOSError(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> None:
        raise FuseOSError(errno.EPERM)
