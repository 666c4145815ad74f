"""A real `pve-balancer run` process with the real election on a plain
directory standing in for /etc/pve: a hostile balancer.yaml delivered by
SIGHUP is rejected, the process keeps its lock and its loop, and an orderly
stop still releases the lock and exits 0.

No API answers (no token file); the cycles fail, which is all this test
needs: cycles that go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Output:
    """Lines of a pipe, collected by a thread, waited for with a bound."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, after: int = 0, limit: float = 60.0) -> int:
        """Index of the first line after `after` containing `text`."""
        deadline = time.monotonic() + limit
        with self._changed:
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"gave up after {limit:g} s waiting for {text!r}: "
                                         f"{self.lines[-20:]}")
                self._changed.wait(remaining)


def wait_until(what: str, probe: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit:g} s waiting for {what}")
        time.sleep(0.05)


def test_sighup_with_a_hostile_file_keeps_the_process_its_lock_and_its_loop(
        tmp_path: Path) -> None:
    root = tmp_path / "pve"
    (root / "priv" / "lock").mkdir(parents=True)
    (root / ".members").write_text("{}\n")  # no cluster section: a single quorate node
    config = root / "balancer.yaml"
    config.write_text("interval: 2\ndry_run: true\n")
    lock = root / "priv" / "lock" / "pve-balancer"
    env = {k: v for k, v in os.environ.items()
           if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    # four cycles 2 s apart, then an orderly stop: reaching it proves the
    # loop went on after the SIGHUP
    proc = subprocess.Popen(
        [sys.executable, "-m", "pve_balancer", "--pve-root", str(root), "--node", "pve1",
         "--api-url", "https://127.0.0.1:9", "run", "--cycles", "4", "--renew-interval", "2",
         "--safety-bound", "30", "--retry-interval", "2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    out = Output(proc.stderr)
    try:
        out.wait_for("starting on node pve1")  # logged once the signal handlers are in place
        wait_until("the lock", lock.is_dir)
        config.write_text("interval: 2\nexclude_nodes: " + "[" * 1000 + "\n")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0, out.lines
        out.wait_for("stopped after 4 cycles")
        seen = out.wait_for("rejected; keeping the previous configuration")
        assert "nested deeper than 8 levels" in out.lines[seen - 1]
        assert not any("Traceback" in line for line in out.lines), out.lines
        assert not lock.exists(), "an orderly stop releases the lock"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
