"""A real three-node pmxcfs cluster on this machine, in namespaces.

    with RealCluster(Path("/tmp/rc")) as cluster:     # builds pmxcfs if needed
        cluster.pve_root("pve2")                      # pve2's /etc/pve, from here
        cluster.cut("pve3"); cluster.heal("pve3")     # corosync partition
        cluster.restart_pmxcfs("pve1")
    python -m tests.real_pmxcfs.cluster               # the same, until Ctrl-C

Layout. A "switch" network namespace holds a Linux bridge; each node is a
holder process (`unshare` of network, mount, UTS and IPC namespaces, then
`sleep`) whose namespaces everything of that node joins with `nsenter`:
- network: one veth pair per node, `eth0` in the node, its peer (named
  after the node) a port of the switch's bridge; the addresses
  (`SUBNET`.N/24) exist only in these namespaces, so corosync's and
  pmxcfs's sockets listen nowhere else;
- mount (private propagation): overlays on /etc and /var/lib whose upper
  layers are a tmpfs of the node (its own /etc/corosync, /etc/hosts,
  /etc/pve mount point, /var/lib/pve-cluster/config.db, /var/lib/corosync),
  and fresh tmpfs on /run (pmxcfs's pid file and /run/pve-cluster) and
  /dev/shm (libqb's ring buffers);
- UTS: the hostname is the node name, which is how pmxcfs knows who it is;
- IPC for completeness (libqb's own sockets are abstract, hence per network
  namespace).
Each node runs `corosync -f` and `pmxcfs -f`. corosync.conf is PVE's shape
(knet, secauth) with the three nodes; the authkey is new for every run.

The nodes' /etc/pve is reachable from here as `/proc/<holder>/root/etc/pve`
(the holder lives as long as the node, across pmxcfs restarts).
`command(node, [...])` prefixes a command with the nsenter that runs it on
the node: mount and UTS namespace by default, which is what an agent needs
(its /etc/pve, its hostname) while it keeps reaching a simulated API on
127.0.0.1 of this namespace; `net=True` adds the node's network namespace.

A cut sets the node's switch port down (a pulled cable: the node's own
stack is untouched). Every process is started in its own session (a
terminal's Ctrl-C reaches only the Python process, which tears down in
order) and with a parent-death signal, so that even a killed test leaves no
process behind; the namespaces have no bind mounts (no `ip netns`), so they
vanish with their last process. `stop()` checks that they did.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.real_pmxcfs import build

NODES = ("pve1", "pve2", "pve3")
SUBNET = "10.211.87"  # private to the namespaces this module creates
CLUSTER_NAME = "rcfs"
NAMESPACES = ("net", "mnt", "uts", "ipc")


class ClusterError(RuntimeError):
    """The cluster could not be started or driven."""


def _run(cmd: Sequence[str], what: str, timeout: float = 30.0) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{what}: {' '.join(cmd)} exited {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _guard(cmd: Sequence[str]) -> list[str]:
    """Dies with the process that started it (SIGKILL when it goes away)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *cmd]


def _ns_inode(pid: int, ns: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{ns}").st_ino


def processes_in(inodes: set[int], ns: str = "net") -> list[int]:
    """Pids of processes whose `ns` namespace is one of `inodes`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/{ns}").st_ino in inodes:
                found.append(int(entry))
    return found


def _kill_wait(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _stop_all(procs: Sequence[subprocess.Popen[bytes] | None], sig: int,
              timeout: float) -> None:
    """Signal every process, then wait for each (SIGKILL after `timeout`)."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_wait(proc, signal.SIGKILL, 10)


@dataclass
class Node:
    name: str
    nodeid: int
    addr: str
    workdir: Path
    holder: subprocess.Popen[bytes] | None = None
    corosync: subprocess.Popen[bytes] | None = None
    pmxcfs: subprocess.Popen[bytes] | None = None
    inodes: dict[str, int] = field(default_factory=dict)
    pmxcfs_starts: int = 0

    @property
    def pid(self) -> int:
        assert self.holder is not None, f"{self.name} is not started"
        return self.holder.pid

    @property
    def root(self) -> Path:
        """The node's `/` as seen from this namespace."""
        return Path(f"/proc/{self.pid}/root")

    @property
    def pve_root(self) -> Path:
        return self.root / "etc" / "pve"

    def nsenter(self, net: bool = True, ipc: bool = True) -> list[str]:
        flags = ["--mount", "--uts"] + (["--net"] if net else []) + (["--ipc"] if ipc else [])
        return ["nsenter", "-t", str(self.pid), *flags, "--"]


class RealCluster:
    """Start with `start()` (or `with`), stop with `stop()`; see the module
    docstring for the layout."""

    def __init__(self, workdir: Path, nodes: Sequence[str] = NODES, *,
                 binary: Path | None = None, quorum_timeout: float = 60.0) -> None:
        if len(nodes) > 250:
            raise ValueError("at most 250 nodes")
        self.workdir = Path(workdir).resolve()
        self.binary = binary
        self.quorum_timeout = quorum_timeout
        self.nodes = {n: Node(n, i + 1, f"{SUBNET}.{i + 1}", self.workdir / n)
                      for i, n in enumerate(nodes)}
        self.switch: subprocess.Popen[bytes] | None = None
        self.switch_inode: int | None = None
        self._logs: list[IO[bytes]] = []
        self._started = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> RealCluster:
        if self._started:
            raise ClusterError("already started")
        self._started = True
        try:
            if self.binary is None:
                self.binary = build.build()
            self.workdir.mkdir(parents=True, exist_ok=True)
            authkey = secrets.token_bytes(256)
            conf = self.corosync_conf()
            self.switch = self._holder(["--net"])
            self.switch_inode = _ns_inode(self.switch.pid, "net")
            self._in(self.switch.pid, ["ip", "link", "add", "br0", "type", "bridge"], "bridge")
            self._in(self.switch.pid, ["ip", "link", "set", "br0", "up"], "bridge up")
            for node in self.nodes.values():
                self._make_node(node, conf, authkey)
            for node in self.nodes.values():
                self._start_corosync(node)
            for node in self.nodes.values():
                self.start_pmxcfs(node.name, wait=False)
            self.wait_quorate(self.quorum_timeout)
            self._seed_tree()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _holder(self, unshare_flags: list[str]) -> subprocess.Popen[bytes]:
        cmd = _guard(["unshare", *unshare_flags, "--", "sleep", "infinity"])
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        me = _ns_inode(os.getpid(), "net")
        deadline = time.monotonic() + 10
        while True:  # unshare has run once the process is `sleep` in another netns
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
                if comm == "sleep" and _ns_inode(proc.pid, "net") != me:
                    return proc
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_wait(proc, signal.SIGKILL, 5)
                raise ClusterError(f"namespace holder {' '.join(cmd)} did not start")
            time.sleep(0.01)

    def _in(self, pid: int, cmd: list[str], what: str, net_only: bool = True) -> str:
        flags = ["--net"] if net_only else ["--net", "--mount", "--uts", "--ipc"]
        return _run(["nsenter", "-t", str(pid), *flags, "--", *cmd], what)

    def _make_node(self, node: Node, conf: str, authkey: bytes) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        scratch = node.workdir / "scratch"  # a tmpfs inside the node, empty from here
        scratch.mkdir(exist_ok=True)
        node.holder = self._holder(["--net", "--mount", "--uts", "--ipc",
                                    "--propagation", "private"])
        node.inodes = {ns: _ns_inode(node.pid, ns) for ns in NAMESPACES}
        s = str(scratch)
        script = f"""set -e
mount -t tmpfs -o mode=0700,size=128m rcfs-scratch {s}
mkdir {s}/etc.upper {s}/etc.work {s}/varlib.upper {s}/varlib.work
mount -t overlay rcfs-etc -o lowerdir=/etc,upperdir={s}/etc.upper,workdir={s}/etc.work /etc
mount -t overlay rcfs-varlib \
 -o lowerdir=/var/lib,upperdir={s}/varlib.upper,workdir={s}/varlib.work /var/lib
mount -t tmpfs -o mode=0755,size=64m rcfs-run /run
mount -t tmpfs -o mode=1777,size=256m rcfs-shm /dev/shm
mkdir -p /run/lock /etc/corosync /var/lib/corosync /var/log/corosync
hostname {node.name}
ip link set lo up
"""
        self._in(node.pid, ["sh", "-c", script], f"{node.name}: namespaces", net_only=False)
        etc = node.root / "etc"
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{n.addr} {n.name}\n" for n in self.nodes.values())
        (etc / "hosts").write_text(hosts)
        (etc / "hostname").write_text(node.name + "\n")
        (etc / "corosync" / "corosync.conf").write_text(conf)
        key = etc / "corosync" / "authkey"
        key.write_bytes(authkey)
        key.chmod(0o400)
        assert self.switch is not None
        self._in(self.switch.pid, ["ip", "link", "add", node.name, "type", "veth", "peer",
                                   "name", "eth0", "netns", str(node.pid)], f"{node.name}: veth")
        self._in(self.switch.pid, ["ip", "link", "set", node.name, "master", "br0", "up"],
                 f"{node.name}: port")
        self._in(node.pid, ["ip", "addr", "add", f"{node.addr}/24", "dev", "eth0"],
                 f"{node.name}: address")
        self._in(node.pid, ["ip", "link", "set", "eth0", "up"], f"{node.name}: link")

    def corosync_conf(self) -> str:
        """PVE's corosync.conf for these nodes (what `pvecm` writes)."""
        nodes = "".join(
            f"  node {{\n    name: {n.name}\n    nodeid: {n.nodeid}\n    quorum_votes: 1\n"
            f"    ring0_addr: {n.addr}\n  }}\n" for n in self.nodes.values())
        return (f"logging {{\n  debug: off\n  to_stderr: yes\n  to_syslog: no\n"
                f"  to_logfile: no\n  timestamp: hires\n}}\n\n"
                f"nodelist {{\n{nodes}}}\n\nquorum {{\n  provider: corosync_votequorum\n}}\n\n"
                f"totem {{\n  cluster_name: {CLUSTER_NAME}\n  config_version: 1\n"
                f"  interface {{\n    linknumber: 0\n  }}\n  ip_version: ipv4-6\n"
                f"  link_mode: passive\n  secauth: on\n  version: 2\n}}\n")

    def _log(self, node: Node, what: str) -> IO[bytes]:
        fh = (node.workdir / f"{what}.log").open("ab")
        fh.write(f"--- {time.strftime('%H:%M:%S')} start\n".encode())
        fh.flush()
        self._logs.append(fh)
        return fh

    def _spawn(self, node: Node, cmd: list[str], what: str) -> subprocess.Popen[bytes]:
        log = self._log(node, what)
        return subprocess.Popen(_guard([*node.nsenter(), *cmd]), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_corosync(self, node: Node) -> None:
        node.corosync = self._spawn(node, ["corosync", "-f"], "corosync")

    # ------------------------------------------------------------ pmxcfs
    def start_pmxcfs(self, name: str, wait: bool = True, timeout: float = 30.0) -> None:
        node = self.nodes[name]
        if node.pmxcfs is not None and node.pmxcfs.poll() is None:
            raise ClusterError(f"{name}: pmxcfs is running")
        assert self.binary is not None
        node.pmxcfs = self._spawn(node, [str(self.binary), "-f"], "pmxcfs")
        node.pmxcfs_starts += 1
        if wait:
            self._wait(f"{name}: pmxcfs mounted", lambda: self._members(node) is not None,
                       timeout, node.pmxcfs)

    def stop_pmxcfs(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        node = self.nodes[name]
        if node.pmxcfs is not None:
            _kill_wait(node.pmxcfs, sig, timeout)

    def restart_pmxcfs(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.stop_pmxcfs(name, sig)
        self.start_pmxcfs(name)

    def pmxcfs_alive(self, name: str) -> bool:
        proc = self.nodes[name].pmxcfs
        return proc is not None and proc.poll() is None

    # ------------------------------------------------------------ network
    def _port(self, name: str, up: bool) -> None:
        assert self.switch is not None
        self._in(self.switch.pid, ["ip", "link", "set", name, "up" if up else "down"],
                 f"{name}: port {'up' if up else 'down'}")

    def cut(self, name: str) -> None:
        """`name` loses its corosync links (its switch port goes down)."""
        self._port(name, up=False)

    def heal(self, name: str) -> None:
        self._port(name, up=True)

    # ------------------------------------------------------------ views
    def pve_root(self, name: str) -> Path:
        return self.nodes[name].pve_root

    def command(self, name: str, cmd: Sequence[str], net: bool = False,
                cwd: Path | None = None) -> list[str]:
        """`cmd` prefixed to run on node `name` (see the module docstring);
        entering a mount namespace moves to its `/` unless `cwd` is given."""
        prefix = self.nodes[name].nsenter(net=net, ipc=net)
        if cwd is not None:
            prefix.insert(-1, f"--wd={cwd}")
        return [*prefix, *cmd]

    @staticmethod
    def _members(node: Node) -> dict[str, Any] | None:
        try:
            doc = json.loads((node.pve_root / ".members").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def members(self, name: str) -> dict[str, Any] | None:
        """The node's `.members` (None while its pmxcfs is not mounted)."""
        return self._members(self.nodes[name])

    def quorate(self, name: str) -> bool | None:
        doc = self.members(name)
        if doc is None:
            return None
        return bool((doc.get("cluster") or {}).get("quorate"))

    def online(self, name: str) -> set[str]:
        doc = self.members(name) or {}
        return {n for n, v in (doc.get("nodelist") or {}).items() if v.get("online")}

    def wait_quorate(self, timeout: float, names: Sequence[str] | None = None) -> None:
        """Until every node in `names` (default all) is quorate and sees all
        of `names` online."""
        names = list(names or self.nodes)
        want = set(names)

        def ok() -> bool:
            return all(self.quorate(n) and want <= self.online(n) for n in names)

        self._wait("quorum on " + ", ".join(names), ok, timeout)

    def _wait(self, what: str, cond: Any, timeout: float,
              proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{what}: the process exited {proc.returncode}\n"
                                   f"{self.logs_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what}: not after {timeout:g} s\n{self.logs_tail()}")
            time.sleep(0.05)

    def _seed_tree(self) -> None:
        """What a PVE installation has and pmxcfs does not create itself:
        priv/lock/ (where locks live) and the nodes' directories."""
        root = self.pve_root(next(iter(self.nodes)))
        for rel in ["priv", "priv/lock", "nodes"] + [
                f"nodes/{n}{sub}" for n in self.nodes for sub in ("", "/qemu-server",
                                                                   "/lxc", "/priv")]:
            with contextlib.suppress(FileExistsError):
                (root / rel).mkdir()

    def logs_tail(self, chars: int = 1500) -> str:
        parts = []
        for node in self.nodes.values():
            for what in ("corosync", "pmxcfs"):
                with contextlib.suppress(OSError):
                    text = (node.workdir / f"{what}.log").read_text(errors="replace")
                    parts.append(f"--- {node.name} {what}:\n{text[-chars:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------ teardown
    def namespace_inodes(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {ns: set() for ns in NAMESPACES}
        for node in self.nodes.values():
            for ns, ino in node.inodes.items():
                out[ns].add(ino)
        if self.switch_inode is not None:
            out["net"].add(self.switch_inode)
        return out

    def _pids_inside(self) -> dict[int, str]:
        """Processes inside one of this cluster's namespaces -> which one."""
        found: dict[int, str] = {}
        for ns, inodes in self.namespace_inodes().items():
            for pid in processes_in(inodes, ns):
                found.setdefault(pid, ns)
        return found

    def leftovers(self) -> list[str]:
        """Processes still inside one of this cluster's namespaces."""
        return [f"pid {p} in {ns}" for p, ns in sorted(self._pids_inside().items())]

    def stop(self) -> None:
        """pmxcfs, then corosync, then the namespaces; safe to call twice.
        Raises ClusterError if anything is left behind."""
        # All nodes at once: one node stopping is a membership change the
        # others would otherwise sit through one by one.
        _stop_all([n.pmxcfs for n in self.nodes.values()], signal.SIGTERM, 15)
        _stop_all([n.corosync for n in self.nodes.values()], signal.SIGTERM, 15)
        for proc in [*(n.holder for n in self.nodes.values()), self.switch]:
            if proc is not None:
                _kill_wait(proc, signal.SIGKILL, 10)
        # Anything else that joined a node (an agent a caller forgot) goes too.
        deadline = time.monotonic() + 10
        while (pids := self._pids_inside()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for fh in self._logs:
            fh.close()
        self._logs = []
        for node in self.nodes.values():
            with contextlib.suppress(OSError):
                (node.workdir / "scratch").rmdir()
        left = self.leftovers()
        if left:
            raise ClusterError(f"left behind: {', '.join(left)}")


# ------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.real_pmxcfs.cluster",
                                 description="run a real 3-node pmxcfs cluster until "
                                 "SIGINT/SIGTERM")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(f"/tmp/real-pmxcfs-{os.getpid()}")
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    cluster = RealCluster(workdir)
    try:
        cluster.start()
        print(json.dumps({"ready": True, "pid": os.getpid(), "workdir": str(workdir),
                          "nodes": {n: {"pid": node.pid, "pve_root": str(node.pve_root),
                                        "addr": node.addr}
                                    for n, node in cluster.nodes.items()}}), flush=True)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except (ClusterError, build.BuildError) as exc:
        print(f"real cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir / "scratch", ignore_errors=True)
    print(json.dumps({"stopped": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
