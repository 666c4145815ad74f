"""`dev/demo` end to end, as a newcomer runs it (slow: about two minutes).

The demo's verdict is checked against what it printed and against its
summary.json; the summary's own figures are checked for consistency with
the pmxcfs rules (the crash takeover cannot precede the lock lifetime).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pvesim.pmxcfs.mounts import mounted_fuse_paths
from tests.integration.lab import REPO, require_fuse

pytestmark = [pytest.mark.fuse, pytest.mark.slow]


def test_dev_demo_relieves_a_hotspot_and_fails_over(tmp_path: Path) -> None:
    require_fuse()
    out = tmp_path / "demo"
    env = dict(os.environ)
    for key in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET"):
        env.pop(key, None)
    proc = subprocess.run([str(REPO / "dev" / "demo"), "--no-colour", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=480,
                          check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]

    # What the newcomer reads.
    assert "HOTSPOT: pve1 CPU" in text
    assert "RELIEVED: pve1 CPU" in text
    assert "FAILOVER:" in text
    assert "hotspot:          relieved" in text
    assert "failover:         " in text and "none observed" not in text
    assert "became leader (lock acquired after it expired)" in text

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True and summary["hotspot_relieved"] is True
    assert summary["leader_changes"] >= 1
    first, *_ = summary["leaders"]
    assert summary["killed"]["node"] == first["node"]
    failover = summary["failover"]
    assert failover["node"] != first["node"]
    assert failover["after_last_renew"] >= summary["lock_lifetime"], failover
    # Every migration was POSTed by the one agent that led at the time.
    assert summary["migrations"] and all(m["ok"] and m["source"] == "pve1"
                                         for m in summary["migrations"])
    assert summary["migrate_posts_by_node"] == [first["node"]]
    assert summary["time_to_relieve"] > 0

    png = Path(summary["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot:             {png}" in text

    # Nothing left behind.
    assert not mounted_fuse_paths(out)
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True,
                              check=False)
    assert leftover.stdout.strip() == "", leftover.stdout
