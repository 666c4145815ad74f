"""The real-cluster harness itself: it forms a quorate 3-node cluster whose
sockets live only in its namespaces, a cut and a heal move quorum, and it
leaves nothing behind: not on an exception inside `with`, not on Ctrl-C
(SIGINT) of the command-line runner. "Nothing" is checked from outside:
the root namespace's mount table, `ip netns list`, the processes, and
which corosync ports listen here (each limited to what could be ours, as
other test runs may share the machine)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.real_pmxcfs.cluster import NODES, RealCluster, processes_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
# Other test runs may share this machine: look only at what could be ours.
OURS = {"corosync", "pmxcfs"}  # nothing else runs these here
HOLDERS = {"sleep", "unshare", "nsenter", "setpriv"}  # ours only outside our namespaces
MOUNTED_IN_NODES = {"/etc", "/etc/pve", "/var/lib", "/run", "/dev/shm"}


def _processes() -> set[tuple[int, str]]:
    """corosync/pmxcfs anywhere, and holder-like processes that live in
    another network namespace than this one."""
    me = os.stat("/proc/self/ns/net").st_ino
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                other_ns = os.stat(f"/proc/{entry}/ns/net").st_ino != me
            except OSError:
                continue
            if comm in OURS or (comm in HOLDERS and other_ns):
                out.add((int(entry), comm))
    return out


def _mounts() -> list[str]:
    """Mount-table lines that a leak of ours would add here: anything named
    rcfs-* (our tmpfs and overlays) or on a path the nodes mount over."""
    lines = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target = line.split()[:2]
        if source.startswith("rcfs-") or target in MOUNTED_IN_NODES or "/rc/" in target:
            lines.append(line)
    return lines


def _udp_ports() -> set[str]:
    """corosync's ports (5403-5412) among this namespace's UDP sockets."""
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            port = int(line.split()[1].rsplit(":", 1)[1], 16)
            if 5403 <= port <= 5412:
                ports.add(str(port))
    return ports


def _world() -> dict[str, object]:
    return {"mounts": _mounts(),
            "netns": subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True, check=False).stdout,
            "processes": _processes(), "udp": _udp_ports()}


def _same_world(before: dict[str, object]) -> None:
    deadline = time.monotonic() + 10  # a process may take a moment to be reaped
    while True:
        after = _world()
        if after == before or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after["mounts"] == before["mounts"]
    assert after["netns"] == before["netns"]
    assert after["processes"] == before["processes"], \
        f"new: {after['processes'] - before['processes']}"  # type: ignore[operator]
    assert after["udp"] == before["udp"]


def test_cluster_forms_listens_only_inside_and_leaves_nothing_on_an_exception(
        tmp_path: Path) -> None:
    before = _world()
    cluster = RealCluster(tmp_path / "rc")
    with pytest.raises(RuntimeError, match="inside the cluster"), cluster:
        for node in NODES:
            members = cluster.members(node)
            assert members is not None and members["nodename"] == node
            assert members["cluster"]["quorate"] == 1
            assert cluster.online(node) == set(NODES)
        # corosync's port 5405 exists in the nodes' namespaces, not here
        assert _udp_ports() == set()
        inside = subprocess.run(cluster.command("pve1", ["cat", "/proc/net/udp"], net=True),
                                capture_output=True, text=True, check=True).stdout
        assert ":151D" in inside
        # one tree: a write on pve1 is there on pve3
        (cluster.pve_root("pve1") / "probe.txt").write_text("hello\n")
        deadline = time.monotonic() + 5
        while not (cluster.pve_root("pve3") / "probe.txt").exists():
            assert time.monotonic() < deadline, "pve1's write never reached pve3"
            time.sleep(0.05)
        assert (cluster.pve_root("pve3") / "probe.txt").read_text() == "hello\n"
        # the hostname is the node name: pmxcfs's way to know who it is
        host = subprocess.run(cluster.command("pve2", ["hostname"]), capture_output=True,
                              text=True, check=True).stdout.strip()
        assert host == "pve2"
        inodes = cluster.namespace_inodes()
        raise RuntimeError("inside the cluster")
    assert processes_in(inodes["net"], "net") == []
    assert processes_in(inodes["mnt"], "mnt") == []
    _same_world(before)


def test_a_cut_node_loses_quorum_and_regains_it_after_the_heal(tmp_path: Path) -> None:
    with RealCluster(tmp_path / "rc") as cluster:
        cluster.cut("pve3")
        cluster._wait("pve3 to lose quorum", lambda: cluster.quorate("pve3") is False, 30)
        assert cluster.quorate("pve1") and cluster.quorate("pve2")
        cluster._wait("pve1 to see pve3 gone", lambda: cluster.online("pve1") == {"pve1", "pve2"},
                      30)
        assert cluster.quorate("pve1") and cluster.quorate("pve2")
        cluster.heal("pve3")
        cluster.wait_quorate(30)


def test_ctrl_c_of_the_runner_tears_everything_down(tmp_path: Path) -> None:
    before = _world()
    proc = subprocess.Popen([sys.executable, "-m", "tests.real_pmxcfs.cluster", "--workdir",
                             str(tmp_path / "rc")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the runner never said it was ready"
        info = json.loads(proc.stdout.readline())
        assert info["ready"] and set(info["nodes"]) == set(NODES)
        members = Path(info["nodes"]["pve2"]["pve_root"]) / ".members"
        assert json.loads(members.read_text())["cluster"]["quorate"] == 1
        assert _world() != before  # the cluster is really there
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"stopped": True}
    _same_world(before)
