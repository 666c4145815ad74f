"""One test per rule of PMXCFS.md, through real syscalls on the FUSE mounts
of the emulator (manual clock, the real 120 s lifetime)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvesim.pmxcfs import PmxcfsEmulator
from tests.pmxcfs.support import errno_of, exists_anywhere, lock_of, running_emulator

pytestmark = pytest.mark.fuse

LOCK = "priv/lock/pve-balancer"


def now(emu: PmxcfsEmulator) -> int:
    return int(emu.now())


def test_mkdir_takes_the_lock_once_for_the_whole_cluster(emu: PmxcfsEmulator) -> None:
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve2"))) is None
    assert exists_anywhere(emu, LOCK) == {"pve1": True, "pve2": True, "pve3": True}
    for node in ("pve1", "pve2", "pve3"):
        assert errno_of(lambda n=node: os.mkdir(lock_of(emu, n))) == "EEXIST"


def test_lock_is_not_expired_at_lifetime_seconds(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    emu.advance(120)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    assert all(exists_anywhere(emu, LOCK).values())


def test_lock_expires_after_more_than_lifetime_whole_seconds(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    emu.advance(121)
    # The unlock request deletes it and still answers EACCES (cluster mode) ...
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    assert exists_anywhere(emu, LOCK) == {"pve1": False, "pve2": False, "pve3": False}
    # ... and ENOENT once it is gone; then anyone may take it.
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3"), (0, 0))) == "ENOENT"
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve3"))) is None


def test_nothing_expires_by_itself(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    emu.advance(1000)
    assert all(exists_anywhere(emu, LOCK).values())
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve2"))) == "EEXIST"
    assert emu.status()["locks"]["pve-balancer"]["expired"] is True


def test_lifetime_counts_from_last_renew_not_from_mtime(emu: PmxcfsEmulator) -> None:
    lock = lock_of(emu, "pve1")
    os.mkdir(lock)
    created_mtime = os.stat(lock).st_mtime
    emu.advance(100)
    os.utime(lock, (0, int(created_mtime)))  # renew, mtime unchanged
    emu.advance(110)  # 210 s after the create, 110 s after the renew
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    assert lock.exists()
    emu.advance(11)  # 121 s after the renew
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    assert not lock.exists()


def test_future_mtime_does_not_extend_the_lifetime(emu: PmxcfsEmulator) -> None:
    lock = lock_of(emu, "pve1")
    os.mkdir(lock)
    os.utime(lock, (0, now(emu) + 10_000))
    emu.advance(121)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3"), (0, 0))) == "EACCES"
    assert not lock.exists()


def test_renew_only_from_the_node_that_created_it(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    # os.utime(path) is the same renew (the kernel passes the current time,
    # not older than the create stamp as long as the manual clock has not
    # been moved ahead of the real one)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve1"))) is None
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"))) == "EACCES"
    emu.advance(5)
    for node in ("pve2", "pve3"):
        assert errno_of(lambda n=node: os.utime(lock_of(emu, n), (0, now(emu)))) == "EACCES"
    assert errno_of(lambda: os.utime(lock_of(emu, "pve1"), (0, now(emu)))) is None
    assert os.stat(lock_of(emu, "pve3")).st_mtime == now(emu)


def test_renew_refused_when_the_mtime_would_go_back(emu: PmxcfsEmulator) -> None:
    lock = lock_of(emu, "pve1")
    os.mkdir(lock)
    future = now(emu) + 300
    assert errno_of(lambda: os.utime(lock, (0, future))) is None
    assert errno_of(lambda: os.utime(lock, (0, now(emu)))) == "EACCES"
    assert errno_of(lambda: os.utime(lock, (0, future - 1))) == "EACCES"
    assert os.stat(lock).st_mtime == future
    assert errno_of(lambda: os.utime(lock, (0, future))) is None


def test_renew_restarts_the_lifetime(emu: PmxcfsEmulator) -> None:
    lock = lock_of(emu, "pve1")
    os.mkdir(lock)
    emu.advance(115)
    os.utime(lock, (0, now(emu)))
    emu.advance(115)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    assert lock.exists()


def test_refused_unlock_request_is_not_remembered(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    emu.advance(98)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    emu.advance(23)  # 121 s: expired, but nobody asked since
    assert all(exists_anywhere(emu, LOCK).values())
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0))) == "EACCES"
    assert not any(exists_anywhere(emu, LOCK).values())


def test_rmdir_releases_from_any_quorate_node(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    assert errno_of(lambda: os.rmdir(lock_of(emu, "pve3"))) is None
    assert not any(exists_anywhere(emu, LOCK).values())
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve2"))) is None


def test_without_quorum_every_write_is_eacces(emu: PmxcfsEmulator) -> None:
    m3 = emu.mounts["pve3"]
    os.mkdir(lock_of(emu, "pve3"))  # pve3 holds a lock ...
    os.mkdir(lock_of(emu, "pve1", "other"))
    (m3 / "balancer.yaml").write_text("cpu_max: 0.8\n")
    emu.advance(200)
    emu.set_quorate("pve3", False)  # ... and loses quorum
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve3", "new"))) == "EACCES"
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve3"))) == "EEXIST"
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3"), (0, now(emu)))) == "EACCES"
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3", "other"), (0, 0))) == "EACCES"
    assert lock_of(emu, "pve1", "other").exists()  # expired, but the request was refused
    assert errno_of(lambda: os.rmdir(lock_of(emu, "pve3"))) == "EACCES"
    assert errno_of(lambda: os.mkdir(m3 / "somedir")) == "EACCES"
    assert errno_of(lambda: (m3 / "new.txt").write_text("x")) == "EACCES"
    assert errno_of(lambda: (m3 / "balancer.yaml").write_text("x")) == "EACCES"
    assert errno_of(lambda: os.truncate(m3 / "balancer.yaml", 0)) == "EACCES"
    assert errno_of(lambda: os.unlink(m3 / "balancer.yaml")) == "EACCES"
    assert errno_of(lambda: os.rename(m3 / "balancer.yaml", m3 / "b.yaml")) == "EACCES"
    # reads and listings keep working
    assert (m3 / "balancer.yaml").read_text() == "cpu_max: 0.8\n"
    assert sorted(os.listdir(m3 / "priv" / "lock")) == ["other", "pve-balancer"]
    # directories lose their write bits: the lock directories read 0500
    assert stat.S_IMODE(os.stat(lock_of(emu, "pve3")).st_mode) == 0o500
    assert stat.S_IMODE(os.stat(m3 / "priv" / "lock").st_mode) == 0o500
    assert stat.S_IMODE(os.stat(lock_of(emu, "pve1")).st_mode) == 0o700
    # the quorate nodes are unaffected
    assert errno_of(lambda: os.mkdir(lock_of(emu, "pve1", "new"))) is None


def test_locks_survive_quorum_loss_and_the_owner_check_holds(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve2"))
    emu.set_quorate("pve2", False)
    emu.advance(30)
    emu.set_quorate("pve2", True)
    assert lock_of(emu, "pve1").exists()
    assert errno_of(lambda: os.utime(lock_of(emu, "pve1"), (0, now(emu)))) == "EACCES"
    assert errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, now(emu)))) is None


def test_restart_of_the_lowest_id_node_restarts_lifetimes(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve2"))
    emu.advance(100)
    assert emu.restart_node("pve3") is False  # not the lowest id: no effect
    assert emu.restart_node("pve1") is True
    emu.advance(100)  # 200 s after the create, 100 s after the restart
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3"), (0, 0))) == "EACCES"
    assert lock_of(emu, "pve3").exists()
    emu.restart_clock()
    emu.advance(120)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3"), (0, 0))) == "EACCES"
    assert lock_of(emu, "pve3").exists()
    emu.advance(1)
    assert errno_of(lambda: os.utime(lock_of(emu, "pve3"), (0, 0))) == "EACCES"
    assert not lock_of(emu, "pve3").exists()


def test_members_tells_each_node_its_quorum(emu: PmxcfsEmulator) -> None:
    def members(node: str) -> dict:
        return json.loads((emu.mounts[node] / ".members").read_text())

    doc = members("pve2")
    assert doc["nodename"] == "pve2"
    assert doc["cluster"]["quorate"] == 1 and doc["cluster"]["nodes"] == 3
    assert {n: v["id"] for n, v in doc["nodelist"].items()} == {"pve1": 1, "pve2": 2, "pve3": 3}
    emu.set_quorate("pve3", False)
    assert members("pve3")["cluster"]["quorate"] == 0
    assert {n: v["online"] for n, v in members("pve3")["nodelist"].items()} == \
        {"pve1": 0, "pve2": 0, "pve3": 1}
    assert members("pve1")["cluster"]["quorate"] == 1
    assert members("pve1")["nodelist"]["pve3"]["online"] == 0
    assert errno_of(lambda: (emu.mounts["pve1"] / ".members").write_text("{}")) == "EACCES"


def test_regular_files_are_shared_between_nodes(emu: PmxcfsEmulator) -> None:
    m1, m2 = emu.mounts["pve1"], emu.mounts["pve2"]
    (m1 / "balancer.yaml").write_text("cpu_max: 0.7\n")
    (m1 / "pve-root-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    token = m1 / "priv" / "pve-balancer.token"
    token.write_text("pve-balancer@pve!agent=secret\n")
    os.chmod(token, 0o600)  # the fixed mode: accepted as a no-op
    assert errno_of(lambda: os.chmod(token, 0o644)) == "EPERM"
    assert stat.S_IMODE(os.stat(m2 / "priv" / "pve-balancer.token").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m2 / "balancer.yaml").st_mode) == 0o640
    assert (m2 / "balancer.yaml").read_text() == "cpu_max: 0.7\n"
    # the temp-file-plus-rename write the status publisher uses
    os.mkdir(m2 / "pve-balancer")
    tmp = m2 / "pve-balancer" / ".status.json.1.tmp"
    tmp.write_text(json.dumps({"leader": "pve2"}))
    os.replace(tmp, m2 / "pve-balancer" / "status.json")
    tmp.write_text(json.dumps({"leader": "pve2", "n": 2}))
    os.replace(tmp, m2 / "pve-balancer" / "status.json")
    assert json.loads((m1 / "pve-balancer" / "status.json").read_text())["n"] == 2
    assert os.listdir(m1 / "pve-balancer") == ["status.json"]
    os.unlink(m1 / "pve-balancer" / "status.json")
    os.rmdir(m2 / "pve-balancer")
    assert not (m1 / "pve-balancer").exists()
    # append, partial overwrite, truncate
    with open(m1 / "balancer.yaml", "a") as fh:
        fh.write("memory_max: 0.9\n")
    assert (m2 / "balancer.yaml").read_text() == "cpu_max: 0.7\nmemory_max: 0.9\n"
    # pmxcfs refuses files over 1 MiB
    assert errno_of(lambda: (m1 / "big").write_bytes(b"x" * (1024 * 1024 + 1))) == "EFBIG"
    # only regular files and directories
    assert errno_of(lambda: os.symlink("balancer.yaml", m1 / "link")) == "ENOSYS"
    assert os.readlink(m2 / "local") == "nodes/pve2"


def test_lock_directories_cannot_be_renamed(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    assert errno_of(lambda: os.rename(lock_of(emu, "pve1"), lock_of(emu, "pve1", "x"))) \
        == "EACCES"


def test_real_clock_lifetime(tmp_path: Path) -> None:
    """The real clock: a 2 s lifetime ends after more than 2 whole
    seconds, never before (polled, not timed)."""
    with running_emulator(tmp_path, manual_clock=False, lifetime=2) as emu:
        lock = lock_of(emu, "pve1")
        start = time.monotonic()  # before the create: the bound below is safe
        os.mkdir(lock)
        while lock.exists():
            errno_of(lambda: os.utime(lock_of(emu, "pve2"), (0, 0)))
            if lock.exists():
                time.sleep(0.1)
        assert time.monotonic() - start > 2.0


def test_renew_check_is_per_node_not_per_process(emu: PmxcfsEmulator) -> None:
    os.mkdir(lock_of(emu, "pve1"))
    t = now(emu)
    renew = "import os, sys; os.utime(sys.argv[1], (0, int(sys.argv[2])))"
    ok = subprocess.run([sys.executable, "-c", renew, str(lock_of(emu, "pve1")), str(t)],
                        check=False, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([sys.executable, "-c", renew, str(lock_of(emu, "pve2")), str(t)],
                             check=False, capture_output=True)
    assert b"PermissionError" in refused.stderr


def test_owner_still_renews_an_expired_lock_nobody_removed(emu: PmxcfsEmulator) -> None:
    lock = lock_of(emu, "pve2")
    os.mkdir(lock)
    emu.advance(300)
    assert errno_of(lambda: os.utime(lock, (0, now(emu)))) is None
    assert errno_of(lambda: os.utime(lock_of(emu, "pve1"), (0, 0))) == "EACCES"
    assert lock.exists()  # the renew restarted the lifetime
