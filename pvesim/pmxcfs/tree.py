"""The one in-memory tree behind every node's mount, and the pmxcfs rules.

Everything that decides an errno lives here, free of FUSE, so the rules of
`PMXCFS.md` are in one place: lock directories under `priv/lock/` (take with
mkdir, renew and unlock request with utime, release with rmdir), the lock
lifetime counted on the emulator's own clock from the create or last renew,
per-node quorum that turns every write into EACCES, and the per-node virtual
`.members` file. `fuseops.NodeMount` only translates FUSE calls into calls
on `ClusterTree` with the node the mount belongs to. That is also why the
module runs a little over the ~500 lines kept elsewhere: split, one errno
decision would be spread over several files.

How closely the timing follows a real pmxcfs is a `Realism` (the default,
`INSTANT`, changes everything at once, as fast tests want; `REALISTIC` has
the delays observed on a real 3-node cluster, docs/election.md).

Paths are relative to the mount root and use "/" ("priv/lock/pve-balancer";
"" is the root). Every public method takes `self.lock`, so the mounts' FUSE
threads and the control channel see one total order of changes, as the
nodes of a real cluster do.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LOCK_DIR = "priv/lock"
MEMBERS = ".members"
MAX_FILE_SIZE = 1024 * 1024  # pmxcfs refuses bigger files (EFBIG)
DEFAULT_LIFETIME = 120


@dataclass(frozen=True)
class Realism:
    """The timing of a real pmxcfs, each part with its own switch.

    - `unlock_delay`: an unlock request that deletes an expired lock is
      answered first and the deletion lands this many seconds later (real:
      a few ms on 3 nodes), so a `mkdir` at once still gets EEXIST;
    - `quorum_loss_delay` / `quorum_return_delay`: seconds from a cut (heal)
      until the node's quorum, `.members` and the rules change (real, 3
      nodes: about 8 s / 3.1-3.4 s);
    - `write_stall`: a write that arrives during a pending quorum loss
      blocks until the membership change lands; then the majority's
      proceeds and the cut node's fails with EPERM (later ones EACCES);
    - `attr_cache`: seconds the kernel may cache names and attributes
      (libfuse's default 1 s that pmxcfs keeps): `stat` can show a lock
      another node deleted; `mkdir` is not fooled.
    """

    unlock_delay: float = 0.0
    quorum_loss_delay: float = 0.0
    quorum_return_delay: float = 0.0
    write_stall: bool = False
    attr_cache: float = 0.0


INSTANT = Realism()
REALISTIC = Realism(unlock_delay=0.005, quorum_loss_delay=8.0, quorum_return_delay=3.2,
                    write_stall=True, attr_cache=1.0)


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class EmulatorClock:
    """Whole seconds for lock lifetimes and mtimes.

    Real mode follows the host clocks (monotonic for lifetimes, wall time for
    mtimes). Manual mode stands still until `advance` moves both, so tests
    can hit "120 s: still held, 121 s: expired" exactly.
    """

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self._base_mono = time.monotonic()
        self._base_wall = time.time()
        self._offset = 0.0

    def lifetime_now(self) -> int:
        """Whole seconds on the clock that counts lock lifetimes."""
        if self.manual:
            return int(self._base_mono + self._offset)
        return int(time.monotonic())

    def wall(self) -> float:
        """Unix time used to stamp mtimes of created and written entries."""
        if self.manual:
            return self._base_wall + self._offset
        return time.time()

    def advance(self, seconds: float) -> None:
        if not self.manual:
            raise ValueError("advance needs the manual clock (--manual-clock)")
        if seconds < 0:
            raise ValueError(f"cannot move the clock backwards ({seconds} s)")
        self._offset += seconds


@dataclass
class Entry:
    """A file or directory; lock directories also carry the lock state."""

    is_dir: bool
    mtime: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[str, Entry] = field(default_factory=dict)
    # Lock directories only: the node that created or last renewed the lock,
    # and the lifetime clock (whole seconds) at that create or renew.
    writer: str | None = None
    changed: int | None = None


def split(path: str) -> list[str]:
    """"/priv/lock/x" or "priv/lock/x" -> ["priv", "lock", "x"]."""
    return [p for p in path.split("/") if p]


def is_private(parts: Sequence[str]) -> bool:
    """pmxcfs keeps `priv/` and `nodes/<node>/priv/` readable by root only."""
    if parts and parts[0] == "priv":
        return True
    return len(parts) >= 3 and parts[0] == "nodes" and parts[2] == "priv"


def is_lock_path(parts: Sequence[str]) -> bool:
    return len(parts) == 3 and parts[0] == "priv" and parts[1] == "lock"


class ClusterTree:
    """The cluster file system as every node sees it, plus the controls.

    `nodes` are given in node-id order (first = id 1, the lowest id, whose
    pmxcfs clock counts lock lifetimes in a real cluster; here the single
    emulator clock plays that part).
    """

    def __init__(self, nodes: Sequence[str], lifetime: int = DEFAULT_LIFETIME,
                 clock: EmulatorClock | None = None, cluster_name: str = "pvesim",
                 ips: dict[str, str] | None = None, realism: Realism = INSTANT) -> None:
        if not nodes:
            raise ValueError("at least one node is needed")
        for name in nodes:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"bad node name {name!r}")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node names in {list(nodes)}")
        if lifetime < 1:
            raise ValueError(f"lock lifetime must be at least 1 s, got {lifetime}")
        self.lock = threading.RLock()
        self.nodes = list(nodes)
        self.node_ids = {name: i + 1 for i, name in enumerate(nodes)}
        self.lifetime = int(lifetime)
        self.clock = clock or EmulatorClock()
        self.cluster_name = cluster_name
        self.ips = {n: (ips or {}).get(n, "127.0.0.1") for n in nodes}
        self.quorate = dict.fromkeys(nodes, True)
        self.realism = realism
        # quorum changes still on their way: node -> (monotonic time due, quorate)
        self._pending: dict[str, tuple[float, bool]] = {}
        self._stall_until = 0.0  # monotonic end of the write stall of a pending cut
        self._stall_cut: set[str] = set()  # the nodes that cut cuts off
        self.members_version = 1
        self.gid = _www_data_gid()
        now = int(self.clock.wall())
        self.root = Entry(is_dir=True, mtime=now)
        for path in ["priv", "priv/lock", "nodes"] + [
            f"nodes/{n}/{sub}" for n in nodes for sub in ("", "qemu-server", "lxc", "priv")
        ]:
            self._mkdirs(split(path), now)

    # ----------------------------------------------------------------- helpers
    def _mkdirs(self, parts: list[str], now: int) -> None:
        cur = self.root
        for p in parts:
            cur = cur.children.setdefault(p, Entry(is_dir=True, mtime=now))

    def _lookup(self, parts: Sequence[str], path: str) -> Entry:
        cur = self.root
        for p in parts:
            if not cur.is_dir:
                raise _oserror(errno.ENOTDIR, path)
            nxt = cur.children.get(p)
            if nxt is None:
                raise _oserror(errno.ENOENT, path)
            cur = nxt
        return cur

    def _parent(self, parts: Sequence[str], path: str) -> Entry:
        if not parts:
            raise _oserror(errno.EEXIST, path)
        parent = self._lookup(parts[:-1], path)
        if not parent.is_dir:
            raise _oserror(errno.ENOTDIR, path)
        return parent

    def _settle(self) -> None:
        """Apply the quorum changes whose delay has passed (lock held)."""
        if not self._pending:
            return
        now = time.monotonic()
        for name, (due, quorate) in list(self._pending.items()):
            if due <= now:
                del self._pending[name]
                self._set_quorate_now(name, quorate)

    def _quorate(self, node: str) -> bool:
        self._settle()
        return self.quorate[node]

    def _need_quorum(self, node: str, path: str) -> None:
        if not self._quorate(node):
            raise _oserror(errno.EACCES, path)

    def _stall(self, node: str, path: str) -> None:
        """A write during a pending cut waits for the membership change; on
        a node it cut off it then fails with EPERM (called without the lock)."""
        with self.lock:
            until, cut = self._stall_until, node in self._stall_cut
        wait = until - time.monotonic()
        if wait <= 0:
            return
        time.sleep(wait)
        if cut:
            raise _oserror(errno.EPERM, path)

    def check_node(self, node: str) -> None:
        if node not in self.quorate:
            raise ValueError(f"unknown node {node!r} (nodes: {', '.join(self.nodes)})")

    @staticmethod
    def _is_virtual(parts: Sequence[str]) -> bool:
        return list(parts) in ([MEMBERS], ["local"])

    def _expired(self, entry: Entry) -> bool:
        """Unchanged for more than `lifetime` whole seconds on the clock."""
        assert entry.changed is not None
        return self.clock.lifetime_now() - entry.changed > self.lifetime

    def members_json(self, node: str) -> bytes:
        """`.members` as that node sees the cluster.

        A quorate node sees the quorate nodes online; a node without quorum
        sees only itself, as a node cut off from corosync does.
        """
        self.check_node(node)
        quorate = self._quorate(node)
        nodelist = {}
        for name in self.nodes:
            online = self.quorate[name] if quorate else name == node
            nodelist[name] = {"id": self.node_ids[name], "online": int(online),
                              "ip": self.ips[name]}
        doc = {
            "nodename": node,
            "version": self.members_version,
            "cluster": {"name": self.cluster_name, "version": 1, "nodes": len(self.nodes),
                        "quorate": int(quorate)},
            "nodelist": nodelist,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def _mode(self, parts: Sequence[str], entry: Entry, quorate: bool) -> int:
        """pmxcfs modes: fixed per path, write bits gone without quorum.

        Directories 0755 (0700 under priv/), files 0640 (0600 under priv/);
        without quorum directories read 0555 (0500 under priv/, e.g. the
        lock directories) and files 0440 (0400), except the root, which
        stays 0755.
        """
        quorate = quorate or not parts  # the mount's root stays 0755 (as pmxcfs)
        if entry.is_dir:
            base, mask, kind = (0o777 if quorate else 0o555), 0o755, 0o040000
        else:
            base, mask, kind = (0o666 if quorate else 0o444), 0o750, 0o100000
        if is_private(parts):
            mask = 0o700
        return kind | (base & mask & (0o755 if entry.is_dir else 0o640))

    # ------------------------------------------------------------------ reads
    def getattr(self, node: str, path: str) -> dict[str, Any]:
        parts = split(path)
        with self.lock:
            quorate = self._quorate(node)
            if parts == [MEMBERS]:
                size, mtime = len(self.members_json(node)), int(self.clock.wall())
                return self._stat(0o100440, size, mtime, 1)
            if parts == ["local"]:
                return self._stat(0o120755, len(f"nodes/{node}"), self.root.mtime, 1)
            entry = self._lookup(parts, path)
            mode = self._mode(parts, entry, quorate)
            if entry.is_dir:
                nlink = 2 + sum(1 for c in entry.children.values() if c.is_dir)
                return self._stat(mode, 0, entry.mtime, nlink)
            return self._stat(mode, len(entry.data), entry.mtime, 1)

    def _stat(self, mode: int, size: int, mtime: int, nlink: int) -> dict[str, Any]:
        ns = mtime * 1_000_000_000
        return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_uid": 0,
                "st_gid": self.gid, "st_mtime": ns, "st_atime": ns, "st_ctime": ns,
                "st_blksize": 4096, "st_blocks": (size + 511) // 512}

    def readdir(self, node: str, path: str) -> list[str]:
        parts = split(path)
        with self.lock:
            entry = self._lookup(parts, path)
            if not entry.is_dir:
                raise _oserror(errno.ENOTDIR, path)
            names = sorted(entry.children)
            if not parts:
                names = [MEMBERS, "local", *names]
            return [".", "..", *names]

    def readlink(self, node: str, path: str) -> str:
        if split(path) == ["local"]:
            return f"nodes/{node}"
        with self.lock:
            self._lookup(split(path), path)
        raise _oserror(errno.EINVAL, path)

    def read(self, node: str, path: str, size: int, offset: int) -> bytes:
        parts = split(path)
        with self.lock:
            if parts == [MEMBERS]:
                return self.members_json(node)[offset:offset + size]
            entry = self._lookup(parts, path)
            if entry.is_dir:
                raise _oserror(errno.EISDIR, path)
            return bytes(entry.data[offset:offset + size])

    def open(self, node: str, path: str, flags: int) -> None:
        """Opening for writing needs quorum (and a real, writable file)."""
        parts = split(path)
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND)
        with self.lock:
            if self._is_virtual(parts):
                if writing:
                    raise _oserror(errno.EACCES, path)
                return
            entry = self._lookup(parts, path)
            if entry.is_dir and writing:
                raise _oserror(errno.EISDIR, path)
            if writing:
                self._need_quorum(node, path)

    def access(self, node: str, path: str, mode: int) -> None:
        parts = split(path)
        with self.lock:
            if not self._is_virtual(parts):
                self._lookup(parts, path)
            if mode & os.W_OK and (self._is_virtual(parts) or not self._quorate(node)):
                raise _oserror(errno.EACCES, path)

    # ----------------------------------------------------------------- writes
    def create(self, node: str, path: str) -> None:
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            if self._is_virtual(parts):
                raise _oserror(errno.EACCES, path)
            parent = self._parent(parts, path)
            self._need_quorum(node, path)
            existing = parent.children.get(parts[-1])
            if existing is not None and existing.is_dir:
                raise _oserror(errno.EISDIR, path)
            parent.children[parts[-1]] = Entry(is_dir=False, mtime=int(self.clock.wall()))
            parent.mtime = int(self.clock.wall())

    def _writable_file(self, node: str, parts: Sequence[str], path: str) -> Entry:
        """The regular file a write or truncate may change (lock held):
        virtual files are read-only, directories refuse, no quorum refuses."""
        if self._is_virtual(parts):
            raise _oserror(errno.EACCES, path)
        entry = self._lookup(parts, path)
        if entry.is_dir:
            raise _oserror(errno.EISDIR, path)
        self._need_quorum(node, path)
        return entry

    def write(self, node: str, path: str, data: bytes, offset: int) -> int:
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            entry = self._writable_file(node, parts, path)
            end = offset + len(data)
            if end > MAX_FILE_SIZE:
                raise _oserror(errno.EFBIG, path)
            if offset > len(entry.data):
                entry.data.extend(b"\0" * (offset - len(entry.data)))
            entry.data[offset:end] = data
            entry.mtime = int(self.clock.wall())
            return len(data)

    def truncate(self, node: str, path: str, length: int) -> None:
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            entry = self._writable_file(node, parts, path)
            if length > MAX_FILE_SIZE:
                raise _oserror(errno.EFBIG, path)
            if length <= len(entry.data):
                del entry.data[length:]
            else:
                entry.data.extend(b"\0" * (length - len(entry.data)))
            entry.mtime = int(self.clock.wall())

    def unlink(self, node: str, path: str) -> None:
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            if self._is_virtual(parts):
                raise _oserror(errno.EACCES, path)
            parent = self._parent(parts, path)
            entry = self._lookup(parts, path)
            if entry.is_dir:
                raise _oserror(errno.EISDIR, path)
            self._need_quorum(node, path)
            del parent.children[parts[-1]]
            parent.mtime = int(self.clock.wall())

    def mkdir(self, node: str, path: str) -> None:
        """Create a directory; directly under priv/lock/ this takes a lock.

        An existing name is EEXIST even without quorum (the kernel's lookup
        answers before pmxcfs is asked); a new name without quorum is EACCES.
        """
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            if self._is_virtual(parts):
                raise _oserror(errno.EEXIST, path)
            parent = self._parent(parts, path)
            if parts[-1] in parent.children:
                raise _oserror(errno.EEXIST, path)
            self._need_quorum(node, path)
            now = int(self.clock.wall())
            entry = Entry(is_dir=True, mtime=now)
            if is_lock_path(parts):
                entry.writer = node
                entry.changed = self.clock.lifetime_now()
            parent.children[parts[-1]] = entry
            parent.mtime = now

    def rmdir(self, node: str, path: str) -> None:
        """Remove a directory; for a lock this is the release, allowed from
        any quorate node (pmxcfs keeps no owner check for rmdir)."""
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            parent = self._parent(parts, path)
            entry = self._lookup(parts, path)
            if not entry.is_dir:
                raise _oserror(errno.ENOTDIR, path)
            self._need_quorum(node, path)
            if entry.children:
                raise _oserror(errno.ENOTEMPTY, path)
            del parent.children[parts[-1]]
            parent.mtime = int(self.clock.wall())

    def rename(self, node: str, old: str, new: str) -> None:
        """Files and plain directories move; lock directories do not (a
        lock is only ever taken by mkdir and dropped by rmdir/unlock)."""
        op, np_ = split(old), split(new)
        self._stall(node, old)
        with self.lock:
            if self._is_virtual(op) or self._is_virtual(np_):
                raise _oserror(errno.EACCES, old)
            oparent = self._parent(op, old)
            entry = self._lookup(op, old)
            nparent = self._parent(np_, new)
            self._need_quorum(node, old)
            if is_lock_path(op) or is_lock_path(np_):
                raise _oserror(errno.EACCES, old)
            if entry.is_dir and len(np_) > len(op) and np_[:len(op)] == op:
                raise _oserror(errno.EINVAL, new)
            target = nparent.children.get(np_[-1])
            if target is not None and target is not entry:
                if entry.is_dir and not target.is_dir:
                    raise _oserror(errno.ENOTDIR, new)
                if not entry.is_dir and target.is_dir:
                    raise _oserror(errno.EISDIR, new)
                if target.is_dir and target.children:
                    raise _oserror(errno.ENOTEMPTY, new)
            del oparent.children[op[-1]]
            nparent.children[np_[-1]] = entry
            now = int(self.clock.wall())
            oparent.mtime = nparent.mtime = now

    def utimens(self, node: str, path: str, mtime: int | None) -> None:
        """Set the mtime; on a lock directory this is a renew or, with
        mtime 0, an unlock request.

        Renew: only from the node that created or last renewed the lock, and
        only with an mtime not older than the stored one; it restarts the
        lifetime. Unlock request: deletes the lock if it has expired (after
        `realism.unlock_delay`), and is answered EACCES either way (as in a
        cluster; ENOENT once it is gone).
        """
        parts = split(path)
        self._stall(node, path)
        with self.lock:
            if self._is_virtual(parts):
                raise _oserror(errno.EACCES, path)
            entry = self._lookup(parts, path)
            self._need_quorum(node, path)
            new_mtime = int(self.clock.wall()) if mtime is None else int(mtime)
            if not (is_lock_path(parts) and entry.is_dir):
                entry.mtime = new_mtime
                return
            if new_mtime == 0:
                if self._expired(entry):
                    parent = self._parent(parts, path)
                    if self.realism.unlock_delay > 0:
                        timer = threading.Timer(self.realism.unlock_delay, self._drop,
                                                (parent, parts[-1], entry))
                        timer.daemon = True
                        timer.start()
                    else:
                        self._drop(parent, parts[-1], entry)
                raise _oserror(errno.EACCES, path)
            if entry.writer != node or new_mtime < entry.mtime:
                raise _oserror(errno.EACCES, path)
            entry.mtime = new_mtime
            entry.writer = node
            entry.changed = self.clock.lifetime_now()

    def _drop(self, parent: Entry, name: str, entry: Entry) -> None:
        """Delete an expired lock, unless it was replaced meanwhile."""
        with self.lock:
            if parent.children.get(name) is entry:
                del parent.children[name]
                parent.mtime = int(self.clock.wall())

    def chmod(self, node: str, path: str, mode: int) -> None:
        """pmxcfs modes are fixed; chmod to the fixed mode is a no-op that
        succeeds (0600 under priv/, 0640 elsewhere), anything else EPERM."""
        parts = split(path)
        with self.lock:
            if not self._is_virtual(parts):
                self._lookup(parts, path)
            allowed = 0o600 if is_private(parts) else 0o640
            if mode & 0o7777 != allowed:
                raise _oserror(errno.EPERM, path)

    def chown(self, node: str, path: str, uid: int, gid: int) -> None:
        """Owner is always root:www-data; only that (or -1) is accepted."""
        parts = split(path)
        with self.lock:
            if not self._is_virtual(parts):
                self._lookup(parts, path)
            keep = (-1, 0xFFFFFFFF)
            if uid not in (*keep, 0) or gid not in (*keep, self.gid):
                raise _oserror(errno.EPERM, path)

    # --------------------------------------------------------------- controls
    def set_quorate(self, node: str, quorate: bool) -> None:
        """A node is cut off (False) or joins again (True): at once, or after
        the realism's delay; a cut with `write_stall` stalls writes until then."""
        quorate = bool(quorate)
        with self.lock:
            self.check_node(node)
            self._settle()
            delay = self.realism.quorum_return_delay if quorate else \
                self.realism.quorum_loss_delay
            pending = self._pending.get(node)
            if (pending[1] if pending else self.quorate[node]) == quorate:
                return
            if delay <= 0 or (pending is not None and self.quorate[node] == quorate):
                self._pending.pop(node, None)  # undoes a change still on its way
                self._set_quorate_now(node, quorate)
                return
            due = time.monotonic() + delay
            self._pending[node] = (due, quorate)
            if not quorate and self.realism.write_stall:
                if self._stall_until <= time.monotonic():
                    self._stall_cut = set()
                self._stall_until = max(self._stall_until, due)
                self._stall_cut.add(node)

    def _set_quorate_now(self, node: str, quorate: bool) -> None:
        if self.quorate[node] != quorate:
            self.quorate[node] = quorate
            self.members_version += 1

    def restart_clock(self) -> None:
        """As when the lowest-id node's pmxcfs restarts: every lock's
        lifetime starts again from now."""
        with self.lock:
            now = self.clock.lifetime_now()
            for entry in self._locks().values():
                entry.changed = now

    def restart_node(self, node: str) -> bool:
        """A node's pmxcfs restarted: restarts lock lifetimes only when it is
        the lowest-id quorate node (the one counting them). Returns whether
        the clock restarted."""
        with self.lock:
            self.check_node(node)
            counting = [n for n in self.nodes if self._quorate(n)]
            if counting and counting[0] == node:
                self.restart_clock()
                return True
            return False

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.clock.advance(seconds)

    def _locks(self) -> dict[str, Entry]:
        lockdir = self._lookup(split(LOCK_DIR), LOCK_DIR)
        return {k: v for k, v in lockdir.children.items() if v.is_dir and v.changed is not None}

    def status(self) -> dict[str, Any]:
        with self.lock:
            now = self.clock.lifetime_now()
            locks = {
                name: {"writer": e.writer, "mtime": e.mtime, "age": now - (e.changed or 0),
                       "expired": self._expired(e)}
                for name, e in self._locks().items()
            }
            return {"nodes": {n: {"id": self.node_ids[n], "quorate": self._quorate(n)}
                              for n in self.nodes},
                    "lifetime": self.lifetime, "manual_clock": self.clock.manual,
                    "wall": self.clock.wall(), "locks": locks}


def _www_data_gid() -> int:
    try:
        return grp.getgrnam("www-data").gr_gid
    except KeyError:
        return 0
