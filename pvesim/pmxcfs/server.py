"""The emulator process: one `ClusterTree`, one FUSE mount per node (each
served by its own thread), and a control channel.

Why one process with threads: the tree must be one object so every node
sees one total order of changes, exactly like pmxcfs's replicated database;
fusepy runs one `fuse_main` per thread without trouble as long as the
process's signal handlers are installed before the mounts start (libfuse
then leaves SIGTERM/SIGINT/SIGHUP alone and the main thread stays in charge
of shutdown).

Control channel: a Unix socket (a path) or TCP on 127.0.0.1 (a port
number), one JSON object per line each way:
  {"op": "ping"} | {"op": "status"} | {"op": "set_quorate", "node": N, "quorate": B}
  {"op": "restart_clock"} | {"op": "restart_node", "node": N}
  {"op": "unmount_node", "node": N} | {"op": "mount_node", "node": N}
      (N's pmxcfs stops: its mount goes away; and starts again, which also
      restarts lock lifetimes when N is the lowest-id quorate node)
  {"op": "advance", "seconds": S} (manual clock) | {"op": "stop"}
Every answer is {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuse import FUSE

from pvesim.pmxcfs.fuseops import NodeMount
from pvesim.pmxcfs.mounts import FSNAME_PREFIX, mounted_fuse_paths, unmount
from pvesim.pmxcfs.tree import ClusterTree

log = logging.getLogger("pvesim.pmxcfs")

class MountThread(threading.Thread):
    """Serves one node's mount until it is unmounted."""

    def __init__(self, tree: ClusterTree, node: str, path: Path, allow_other: bool) -> None:
        super().__init__(name=f"fuse-{node}", daemon=True)
        self.tree, self.node, self.path, self.allow_other = tree, node, path, allow_other
        self.error: BaseException | None = None

    def run(self) -> None:
        opts: dict[str, Any] = {
            "foreground": True,
            "fsname": f"{FSNAME_PREFIX}:{self.node}",
            "subtype": "pmxcfs",
            # Another node's mount may change any entry at any moment: no
            # kernel caching of names or attributes, unless the realism asks
            # for pmxcfs's (libfuse's default 1 s; never for absent names).
            "entry_timeout": self.tree.realism.attr_cache,
            "attr_timeout": self.tree.realism.attr_cache, "negative_timeout": 0,
            "default_permissions": True,
        }
        if self.allow_other:
            opts["allow_other"] = True
        try:
            FUSE(NodeMount(self.tree, self.node), str(self.path), **opts)
        except BaseException as exc:  # reported by the main thread
            self.error = exc


class PmxcfsServer:
    """Mounts every node's view under `mount_base/<node>` and serves the
    control channel; `stop()` unmounts everything."""

    def __init__(self, tree: ClusterTree, mount_base: Path, control: str | None = None,
                 allow_other: bool = False) -> None:
        self.tree = tree
        self.mount_base = mount_base
        self.control = control
        self.allow_other = allow_other
        self.mounts = {n: mount_base / n for n in tree.nodes}
        self.threads: dict[str, MountThread] = {}
        self.down: set[str] = set()  # nodes unmounted on purpose (unmount_node)
        self.stop_requested = threading.Event()
        self._control_server: socketserver.BaseServer | None = None
        self.control_address: str | None = None

    def mount_all(self, timeout: float = 10.0) -> None:
        self.mount_base.mkdir(parents=True, exist_ok=True)
        for stale in mounted_fuse_paths(self.mount_base):
            log.warning("unmounting stale mount %s", stale)
            unmount(stale)
        for node in self.mounts:
            self.mount_node(node, timeout)

    def mount_node(self, node: str, timeout: float = 10.0) -> None:
        """Serve `node`'s mount (again, after `unmount_node`)."""
        path = self.mounts[node]
        if path in mounted_fuse_paths():
            unmount(path)
        path.mkdir(exist_ok=True)
        if any(path.iterdir()):
            raise RuntimeError(f"mount point {path} is not empty")
        thread = MountThread(self.tree, node, path, self.allow_other)
        thread.start()
        self.threads[node] = thread
        deadline = time.monotonic() + timeout
        while path not in mounted_fuse_paths():
            if not thread.is_alive():
                raise RuntimeError(f"mounting {path} failed: {thread.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mounting {path} timed out after {timeout} s")
            time.sleep(0.02)
        self.down.discard(node)

    def unmount_node(self, node: str) -> None:
        """`node`'s pmxcfs stopped: its mount point is an empty directory."""
        self.down.add(node)
        unmount(self.mounts[node])
        thread = self.threads.get(node)
        if thread is not None:
            thread.join(timeout=5)

    def start_control(self) -> None:
        if self.control is None:
            return
        handler = _make_handler(self.handle_request)
        if self.control.isdigit():
            srv: socketserver.BaseServer = _TcpServer(("127.0.0.1", int(self.control)), handler)
            port = srv.server_address[1]  # type: ignore[index]
            self.control_address = str(port)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control)
            srv = _UnixServer(self.control, handler)
            self.control_address = self.control
        self._control_server = srv
        threading.Thread(target=srv.serve_forever, name="control", daemon=True).start()

    def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        tree = self.tree
        try:
            if op == "ping":
                return {"ok": True}
            if op == "status":
                return {"ok": True, **tree.status(),
                        "mounts": {n: str(p) for n, p in self.mounts.items()}}
            if op == "set_quorate":
                tree.set_quorate(str(req["node"]), bool(req["quorate"]))
                return {"ok": True}
            if op == "restart_clock":
                tree.restart_clock()
                return {"ok": True}
            if op == "restart_node":
                return {"ok": True, "restarted": tree.restart_node(str(req["node"]))}
            if op == "unmount_node":
                tree.check_node(str(req["node"]))
                self.unmount_node(str(req["node"]))
                return {"ok": True}
            if op == "mount_node":
                node = str(req["node"])
                tree.check_node(node)
                if node not in self.down:
                    return {"ok": False, "error": f"mount_node: {node} is mounted"}
                self.mount_node(node)
                return {"ok": True, "restarted": tree.restart_node(node)}
            if op == "advance":
                tree.advance(float(req["seconds"]))
                return {"ok": True, "wall": tree.clock.wall()}
            if op == "stop":
                self.stop_requested.set()
                return {"ok": True}
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            return {"ok": False, "error": f"{op}: {exc}"}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def stop(self) -> None:
        if self._control_server is not None:
            self._control_server.shutdown()
            self._control_server.server_close()
            if self.control_address and not self.control_address.isdigit():
                with contextlib.suppress(OSError):
                    os.unlink(self.control_address)
        for node, path in self.mounts.items():
            if node in self.threads and node not in self.down:
                unmount(path)
        for thread in self.threads.values():
            thread.join(timeout=5)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _make_handler(
    dispatch: Callable[[dict[str, Any]], dict[str, Any]],
) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict):
                        raise ValueError("request must be a JSON object")
                    resp = dispatch(req)
                except ValueError as exc:
                    resp = {"ok": False, "error": f"bad request: {exc}"}
                self.wfile.write(json.dumps(resp).encode() + b"\n")
                self.wfile.flush()

    return Handler
