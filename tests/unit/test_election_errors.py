"""PmxcfsElection never raises and says why it cannot lead (no FUSE needed:
these are the cases where /etc/pve is missing or says "no quorum")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pve_balancer.election import PmxcfsElection


def test_missing_pve_root_is_a_standby_sentence_not_an_exception(tmp_path: Path) -> None:
    e = PmxcfsElection(tmp_path / "not-mounted", "pve1")
    assert e.tick(1000.0) == (f"standby: cannot read {tmp_path}/not-mounted/priv/lock "
                              "(ENOENT); is pmxcfs running?")
    assert e.tick(1010.0) is None  # same state: no new sentence
    assert not e.is_leader
    assert e.confirm(1010.0) is False
    e.release()
    assert e.describe() == "standby (leader: unknown)"


def test_not_quorate_members_keeps_it_passive(tmp_path: Path) -> None:
    (tmp_path / "priv" / "lock").mkdir(parents=True)
    members = {"nodename": "pve1", "version": 3,
               "cluster": {"name": "c", "version": 2, "nodes": 3, "quorate": 0}}
    (tmp_path / ".members").write_text(json.dumps(members))
    e = PmxcfsElection(tmp_path, "pve1")
    assert e.tick(1000.0) == "standby: node is not quorate"
    assert not (tmp_path / "priv" / "lock" / "pve-balancer").exists()
    assert e.describe() == "standby (no quorum)"


def test_local_mode_members_without_cluster_counts_as_quorate(tmp_path: Path) -> None:
    (tmp_path / "priv" / "lock").mkdir(parents=True)
    (tmp_path / ".members").write_text(json.dumps({"nodename": "pve1", "version": 1}))
    e = PmxcfsElection(tmp_path, "pve1")
    assert e.tick(1000.0) == "became leader (lock acquired)"


def test_a_broken_clock_means_not_leader(tmp_path: Path) -> None:
    class BrokenClock:
        def now(self) -> float:
            raise RuntimeError("clock gone")

    (tmp_path / "priv" / "lock").mkdir(parents=True)
    e = PmxcfsElection(tmp_path, "pve1", clock=BrokenClock())
    assert e.tick(1000.0) == "became leader (lock acquired)"
    assert e.is_leader is False


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"safety_bound": 10.0, "renew_interval": 10.0}, "safety_bound"),
    ({"renew_interval": 0.0}, "renew_interval"),
    ({"retry_interval": -1.0}, "retry_interval"),
])
def test_bad_timing_is_refused_by_name(tmp_path: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        PmxcfsElection(tmp_path, "pve1", **kwargs)


def test_an_unreadable_root_stops_the_leader_once_and_it_resumes_after(tmp_path: Path) -> None:
    """pmxcfs stopping leaves an empty mount point: the leader steps down in
    that tick, says so once, tries nothing, and resumes its lock once the
    tree is back (a plain directory stands in for the mount here)."""
    lock_dir = tmp_path / "priv" / "lock"
    lock_dir.mkdir(parents=True)
    e = PmxcfsElection(tmp_path, "pve1", retry_interval=5.0)
    assert e.tick(1000.0) == "became leader (lock acquired)"
    (tmp_path / "priv").rename(tmp_path / "gone")
    said = e.tick(1005.0)
    assert said == (f"stepped down: cannot read {lock_dir} (ENOENT); is pmxcfs running?")
    assert not e.is_leader
    assert [e.tick(1005.0 + 5 * i) for i in range(1, 4)] == [None, None, None]
    assert not (tmp_path / "priv").exists()  # no attempt recreated anything
    (tmp_path / "gone").rename(tmp_path / "priv")
    assert e.tick(1030.0) == "became leader (resumed the lock this node holds)"
