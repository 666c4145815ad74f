"""The leader's status file: atomic, modest write rate, readable back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pve_balancer.status import (
    DecisionRecord,
    NodeRecord,
    StatusWriter,
    decisions_from,
    read_status,
    write_atomic,
)


def rec(t: float, vmid: int = 101, result: str = "started") -> DecisionRecord:
    return DecisionRecord(t, "cpu", vmid, f"vm{vmid}", "pve1", "pve2", result, "because")


def test_writes_on_change_else_at_most_every_refresh(tmp_path: Path) -> None:
    path = tmp_path / "pve-balancer" / "status.json"
    w = StatusWriter(path, "pve1", refresh=30.0)
    w.became_leader(100.0)
    assert w.maybe_write(100.0), "first write is immediate"
    for t in range(105, 130, 5):
        w.update([NodeRecord("pve1", True, 0.5, 0.5, 1, 2)], {"cpu_max": 0.8})
        w.note(f"cycle {t}")
        assert not w.maybe_write(float(t)), "no write every cycle"
    assert w.maybe_write(130.0), "refresh due after 30 s"
    w.record(rec(131.0))
    assert w.maybe_write(131.0), "a new decision is written at once"
    assert w.writes == 3
    doc = read_status(path)
    assert doc is not None
    assert doc["leader"] == "pve1" and doc["since"] == 100.0 and doc["updated"] == 131.0
    assert doc["nodes"][0]["cpu_ema"] == 0.5
    assert decisions_from(doc) == [rec(131.0)]


def test_keeps_the_last_n_decisions(tmp_path: Path) -> None:
    w = StatusWriter(tmp_path / "s.json", "pve1", keep=3)
    for i in range(5):
        w.record(rec(float(i), 100 + i))
    w.maybe_write(10.0)
    doc = read_status(tmp_path / "s.json")
    assert doc is not None
    assert [d.vmid for d in decisions_from(doc)] == [102, 103, 104]


def test_atomic_replace_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text("old")
    inode = path.stat().st_ino
    write_atomic(path, json.dumps({"a": 1}))
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_ino != inode, "replaced by rename, not rewritten in place"
    assert os.listdir(tmp_path) == ["status.json"]


def test_failed_write_is_logged_and_retried(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "pve-balancer"
    blocker.write_text("a file where the directory should be")
    w = StatusWriter(blocker / "status.json", "pve1")
    assert not w.maybe_write(1.0)
    assert "cannot write" in caplog.text
    blocker.unlink()
    assert w.maybe_write(2.0)


def test_unreadable_documents(tmp_path: Path) -> None:
    assert read_status(tmp_path / "missing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{half")
    assert read_status(bad) is None
    bad.write_text("[1, 2]")
    assert read_status(bad) is None
    assert decisions_from({"decisions": [{"vmid": "x"}, 3, {"time": 1, "mode": "cpu",
                                                              "vmid": 5, "source": "a",
                                                              "target": "b",
                                                              "result": "ok"}]}) == [
        DecisionRecord(1.0, "cpu", 5, "", "a", "b", "ok", "")]
