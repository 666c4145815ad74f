"""Start, drive and stop the emulator process from Python (tests, lab mode).

    emu = PmxcfsEmulator(Path("/tmp/lab/pve"), ["pve1", "pve2", "pve3"], lifetime=3)
    emu.start()
    emu.mounts["pve2"]          # Path of pve2's /etc/pve
    emu.set_quorate("pve2", False)
    emu.restart_clock()
    emu.stop()                  # also cleans up after a crashed emulator

The emulator runs as a child process so that a crash of the caller cannot
leave a FUSE server half alive inside it; its mounts are identified by
fsname, so `stop()` (and `cleanup_mounts`) can unmount leftovers of an
earlier run that died.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pvesim.pmxcfs.mounts import mounted_fuse_paths, unmount
from pvesim.pmxcfs.tree import DEFAULT_LIFETIME, INSTANT, Realism

_REPO_ROOT = Path(__file__).resolve().parents[2]


class EmulatorError(RuntimeError):
    """The emulator could not be started or did not answer."""


def fuse_available() -> str | None:
    """None when FUSE mounts can be made here, else the reason why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (FUSE kernel support missing or not passed through)"
    if os.geteuid() != 0:
        return "the pmxcfs emulator mounts as root; run the tests as root"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable"
    return None


def cleanup_mounts(under: Path) -> list[Path]:
    """Unmount every emulator mount below `under` (left by a crash)."""
    stale = mounted_fuse_paths(under)
    for path in stale:
        unmount(path)
    return stale


class PmxcfsEmulator:
    """The emulator as a child process with one mount per node.

    `mounts` maps node name -> mount path (`mount_base/<node>`), known before
    `start()`. Node ids follow the order of `nodes` (first = id 1).
    `manual_clock=True` freezes the emulator's clock until `advance()`.
    """

    def __init__(self, mount_base: Path, nodes: Sequence[str], *,
                 lifetime: int = DEFAULT_LIFETIME, manual_clock: bool = False,
                 cluster_name: str = "pvesim", allow_other: bool = False,
                 log_path: Path | None = None, start_timeout: float = 20.0,
                 python: str = sys.executable, realism: Realism = INSTANT) -> None:
        if not nodes:
            raise ValueError("at least one node is needed")
        self.mount_base = Path(mount_base).resolve()
        self.nodes = list(nodes)
        self.lifetime = lifetime
        self.manual_clock = manual_clock
        self.cluster_name = cluster_name
        self.allow_other = allow_other
        self.log_path = log_path or self.mount_base.parent / f"{self.mount_base.name}.pmxcfs.log"
        self.control_path = self.mount_base.parent / f"{self.mount_base.name}.control.sock"
        if len(str(self.control_path)) > 100:  # AF_UNIX paths are limited to 108 bytes
            self.control_path = Path(tempfile.mkdtemp(prefix="pmxcfs-")) / "control.sock"
        self.start_timeout = start_timeout
        self.python = python
        self.realism = realism
        self.mounts: dict[str, Path] = {n: self.mount_base / n for n in self.nodes}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> PmxcfsEmulator:
        reason = fuse_available()
        if reason:
            raise EmulatorError(f"cannot start the pmxcfs emulator: {reason}")
        if self.proc is not None and self.proc.poll() is None:
            raise EmulatorError("already running")
        self.mount_base.mkdir(parents=True, exist_ok=True)
        cleanup_mounts(self.mount_base)
        cmd = [self.python, "-m", "pvesim.pmxcfs", "--mount-base", str(self.mount_base),
               "--nodes", ",".join(self.nodes), "--lifetime", str(self.lifetime),
               "--control", str(self.control_path), "--cluster-name", self.cluster_name,
               "--exit-with-parent"]
        if self.manual_clock:
            cmd.append("--manual-clock")
        if self.allow_other:
            cmd.append("--allow-other")
        r = self.realism
        cmd += ["--unlock-delay", str(r.unlock_delay), "--quorum-loss-delay",
                str(r.quorum_loss_delay), "--quorum-return-delay", str(r.quorum_return_delay),
                "--write-stall" if r.write_stall else "--no-write-stall",
                "--attr-cache", str(r.attr_cache)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise EmulatorError(f"emulator did not come up; see {self.log_path}: "
                                    f"{self._log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        info = json.loads(line)
        if not info.get("ready"):
            self.stop()
            raise EmulatorError(f"unexpected start line {line!r}")
        return self

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def request(self, op: str, **params: Any) -> dict[str, Any]:
        """Send one control request; raise EmulatorError on failure."""
        msg = json.dumps({"op": op, **params}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.control_path))
                sock.sendall(msg)
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as exc:
            raise EmulatorError(f"control channel {self.control_path}: {exc}") from exc
        try:
            resp: dict[str, Any] = json.loads(buf)
        except ValueError as exc:
            raise EmulatorError(f"bad control answer {buf!r}") from exc
        if not resp.get("ok"):
            raise EmulatorError(str(resp.get("error")))
        return resp

    def set_quorate(self, node: str, quorate: bool) -> None:
        self.request("set_quorate", node=node, quorate=quorate)

    def restart_clock(self) -> None:
        """Lock lifetimes start again (the lowest-id node's pmxcfs restarted)."""
        self.request("restart_clock")

    def restart_node(self, node: str) -> bool:
        """`node`'s pmxcfs restarted; True if that restarted the lifetimes."""
        return bool(self.request("restart_node", node=node)["restarted"])

    def unmount_node(self, node: str) -> None:
        """`node`'s pmxcfs stops: its mount point becomes an empty directory."""
        self.request("unmount_node", node=node)

    def mount_node(self, node: str) -> bool:
        """`node`'s pmxcfs starts again; True if that restarted the lifetimes
        (see `restart_node`)."""
        return bool(self.request("mount_node", node=node)["restarted"])

    def advance(self, seconds: float) -> float:
        """Move the manual clock; returns the emulator's new wall time."""
        return float(self.request("advance", seconds=seconds)["wall"])

    def now(self) -> float:
        """The emulator's wall time (what it stamps mtimes with)."""
        return float(self.status()["wall"])

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def stop(self) -> None:
        """Stop the process and make sure no mount is left behind."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(EmulatorError):
                self.request("stop")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        cleanup_mounts(self.mount_base)
        with contextlib.suppress(OSError):
            self.control_path.unlink()

    def __enter__(self) -> PmxcfsEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
