"""The emulator process itself: start/stop from Python and from a shell,
cleanup after a crash, control errors, clear failure without FUSE."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvesim.pmxcfs import EmulatorError, PmxcfsEmulator, cleanup_mounts, ctl
from pvesim.pmxcfs.mounts import mounted_fuse_paths
from tests.pmxcfs.support import require_fuse, running_emulator

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]


def test_stop_cleans_up_after_the_emulator_crashed(tmp_path: Path) -> None:
    require_fuse()
    emu = PmxcfsEmulator(tmp_path / "pve", ["pve1", "pve2"], lifetime=3)
    emu.start()
    assert sorted(mounted_fuse_paths(emu.mount_base)) == sorted(emu.mounts.values())
    assert emu.pid is not None
    os.kill(emu.pid, signal.SIGKILL)
    assert emu.proc is not None
    emu.proc.wait(timeout=10)
    with pytest.raises(OSError):  # ENOTCONN: the server is gone, the mounts are not
        os.listdir(emu.mounts["pve1"])
    emu.stop()
    assert mounted_fuse_paths(emu.mount_base) == []
    assert os.listdir(emu.mounts["pve1"]) == []
    # and a new emulator starts on the same mount points
    with running_emulator(tmp_path, nodes=["pve1", "pve2"]) as again:
        assert (again.mounts["pve1"] / ".members").exists()


def test_cleanup_mounts_removes_leftovers_of_a_dead_process(tmp_path: Path) -> None:
    require_fuse()
    emu = PmxcfsEmulator(tmp_path / "pve", ["pve1"], lifetime=3).start()
    assert emu.proc is not None
    emu.proc.kill()
    emu.proc.wait(timeout=10)
    assert cleanup_mounts(emu.mount_base) == [emu.mounts["pve1"]]
    assert mounted_fuse_paths(emu.mount_base) == []
    emu.stop()


def test_control_errors_are_reported(tmp_path: Path) -> None:
    with running_emulator(tmp_path, manual_clock=False, lifetime=5) as emu:
        with pytest.raises(EmulatorError, match="manual clock"):
            emu.advance(10)
        with pytest.raises(EmulatorError, match="unknown node 'pve9'"):
            emu.set_quorate("pve9", False)
        with pytest.raises(EmulatorError, match="unknown op"):
            emu.request("explode")
        assert emu.status()["nodes"]["pve2"] == {"id": 2, "quorate": True}


def test_start_without_fuse_fails_with_the_reason(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pvesim.pmxcfs import harness

    monkeypatch.setattr(harness, "fuse_available", lambda: "/dev/fuse does not exist")
    with pytest.raises(EmulatorError, match="/dev/fuse does not exist"):
        PmxcfsEmulator(tmp_path / "pve", ["pve1"]).start()


def test_command_line_with_a_tcp_control_port(tmp_path: Path) -> None:
    require_fuse()
    base = tmp_path / "pve"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvesim.pmxcfs", "--mount-base", str(base),
         "--nodes", "alpha,beta", "--lifetime", "4", "--control", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no ready line"
        info = json.loads(proc.stdout.readline())
        assert info["ready"] is True
        assert info["mounts"] == {"alpha": str(base / "alpha"), "beta": str(base / "beta")}
        with socket.create_connection(("127.0.0.1", int(info["control"])), timeout=10) as s:
            s.sendall(b'{"op": "set_quorate", "node": "beta", "quorate": false}\n'
                      b'{"op": "status"}\n')
            f = s.makefile()
            assert json.loads(f.readline()) == {"ok": True}
            status = json.loads(f.readline())
        assert status["lifetime"] == 4
        assert status["nodes"]["beta"]["quorate"] is False
        members = json.loads((base / "beta" / ".members").read_text())
        assert members["nodename"] == "beta" and members["cluster"]["quorate"] == 0
        # the shell client speaks the same channel
        assert ctl.main(["--control", str(info["control"]), "quorum", "beta", "on"]) == 0
        members = json.loads((base / "beta" / ".members").read_text())
        assert members["cluster"]["quorate"] == 1
        assert ctl.main(["--control", str(info["control"]), "advance", "5"]) == 1  # real clock
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert mounted_fuse_paths(base) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cleanup_mounts(base)


def test_emulator_goes_away_with_a_killed_parent(tmp_path: Path) -> None:
    """A test run killed with SIGKILL must not leave mounts behind."""
    require_fuse()
    base = tmp_path / "pve"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pvesim.pmxcfs import PmxcfsEmulator\n"
        f"PmxcfsEmulator(Path({str(base)!r}), ['pve1', 'pve2']).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 30)
        assert ready and parent.stdout.readline() == b"up\n"
        assert len(mounted_fuse_paths(base)) == 2
        parent.kill()
        parent.wait(timeout=10)
        for _ in range(100):  # the emulator notices within a fraction of a second
            if not mounted_fuse_paths(base):
                break
            time.sleep(0.1)
        assert mounted_fuse_paths(base) == []
    finally:
        if parent.poll() is None:
            parent.kill()
        cleanup_mounts(base)


def test_one_nodes_pmxcfs_stops_and_starts_while_the_others_serve(tmp_path: Path) -> None:
    """unmount_node/mount_node: that node's /etc/pve is an empty directory
    in between, the tree (and its locks) survive, the process keeps running;
    the lowest-id quorate node's start restarts the lock lifetimes."""
    with running_emulator(tmp_path) as emu:
        lock = "priv/lock/pve-balancer"
        os.mkdir(emu.mounts["pve2"] / lock)
        emu.advance(100)
        emu.unmount_node("pve2")
        assert os.listdir(emu.mounts["pve2"]) == []
        assert (emu.mounts["pve1"] / lock).is_dir()
        with pytest.raises(EmulatorError, match="is mounted"):
            emu.mount_node("pve1")
        assert emu.mount_node("pve2") is False  # not the lowest id: clock untouched
        assert (emu.mounts["pve2"] / lock).is_dir()
        assert emu.status()["locks"]["pve-balancer"]["age"] == 100
        os.utime(emu.mounts["pve2"] / lock, (0, int(emu.now())))  # still pve2's lock
        emu.advance(50)
        emu.unmount_node("pve1")
        assert emu.pid is not None and emu.proc is not None and emu.proc.poll() is None
        assert emu.mount_node("pve1") is True
        assert emu.status()["locks"]["pve-balancer"]["age"] == 0
