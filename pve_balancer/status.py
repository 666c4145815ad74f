"""The leader's public notice: `{root}/pve-balancer/status.json`.

The pmxcfs lock directory says nothing about its owner, so the leader
publishes who it is, since when, the nodes as it sees them (with CPU EMAs,
which no single API call can give) and its last decisions. Every node's
`pve-balancer status` reads it from its own `/etc/pve`.

Writes go through pmxcfs to every node, so they are kept modest: at once
when something changed (new leader, new decision), otherwise a refresh every
`REFRESH` seconds so readers can tell a live leader from a dead one by
`updated`. Each write is a temp file plus rename, so readers never see half
a file.

A leader that stops cleanly says so before it gives up the lock
(`StatusWriter.release`): `leader` becomes null and `released_by` and
`released` say who stopped when, so `status` reports "no leader" at once
instead of naming a stopped node until its status goes stale. It writes
while it still holds the lock, so a successor's status is never overwritten.

This module also owns the facts other modules rely on: when a published
status is stale (its leader is presumably gone, `is_stale`), what a
document says about the leader (`leader_state`), and how a file in
/etc/pve is replaced safely (`write_atomic`, also used by `setup`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REFRESH = 30.0
KEEP_DECISIONS = 20
FORMAT_VERSION = 1
STALE_AFTER_MIN = 120.0
"""A status is never called stale sooner than this: a leader's write can
wait out a pmxcfs membership change, and the lock itself lives 120 s."""


def is_stale(doc: Mapping[str, Any], now: float) -> bool:
    """Whether the leader that wrote `doc` has stopped refreshing it: no
    update for four refresh periods (and at least `STALE_AFTER_MIN`). A
    document without a usable time is not judged stale."""
    updated, refresh = doc.get("updated"), doc.get("refresh", REFRESH)
    if isinstance(updated, bool) or not isinstance(updated, int | float):
        return False
    if isinstance(refresh, bool) or not isinstance(refresh, int | float):
        refresh = REFRESH
    return now - float(updated) > max(4 * float(refresh), STALE_AFTER_MIN)


def leader_state(doc: Mapping[str, Any] | None, now: float) -> str:
    """What a published document says about the leader: "leading" (fresh),
    "stale" (no refresh for too long: gone, or a failover under way),
    "released" (it stopped cleanly and nobody has taken over yet) or "none"
    (no document, or one that names no leader)."""
    if doc is None:
        return "none"
    leader = doc.get("leader")
    if not isinstance(leader, str) or not leader:
        return "released" if doc.get("released_by") else "none"
    return "stale" if is_stale(doc, now) else "leading"


@dataclass(frozen=True)
class DecisionRecord:
    """One migration decision and what became of it."""

    time: float
    mode: str
    vmid: int
    name: str
    source: str
    target: str
    result: str  # "started", "ok", "failed: ...", "dry-run", "observe-only", ...
    reason: str = ""


@dataclass(frozen=True)
class NodeRecord:
    name: str
    online: bool
    cpu_ema: float | None
    cpu: float
    mem: int
    maxmem: int
    maintenance: bool = False


class StatusWriter:
    """Keeps the document in memory and writes it when due."""

    def __init__(self, path: Path, node: str, refresh: float = REFRESH,
                 keep: int = KEEP_DECISIONS) -> None:
        self.path = path
        self.node = node
        self.refresh = refresh
        self._decisions: deque[DecisionRecord] = deque(maxlen=keep)
        self._nodes: tuple[NodeRecord, ...] = ()
        self._thresholds: dict[str, float] = {}
        self._since: float | None = None
        self._last_action = ""
        self._last_write: float | None = None
        self._released: float | None = None
        self._dirty = True
        self.writes = 0

    def seed_decisions(self, records: Sequence[DecisionRecord]) -> None:
        """Continue a previous leader's history (read from the old file)."""
        for rec in records:
            self._decisions.append(rec)

    def became_leader(self, since: float) -> None:
        self._since = since
        self._released = None
        self._dirty = True

    def release(self, now: float) -> bool:
        """This leader stops cleanly: publish, at once, that it no longer
        leads (call it while the lock is still held). Whether it was
        written."""
        self._released = now
        self._dirty = True
        return self.maybe_write(now)

    def record(self, rec: DecisionRecord) -> None:
        self._decisions.append(rec)
        self._dirty = True

    def update(self, nodes: Sequence[NodeRecord], thresholds: Mapping[str, float]) -> None:
        """Latest view; does not by itself make a write due."""
        self._nodes = tuple(nodes)
        self._thresholds = dict(thresholds)

    def note(self, last_action: str) -> None:
        """This cycle's sentence (shown by `status`; no write by itself)."""
        self._last_action = last_action

    def document(self, now: float) -> dict[str, Any]:
        released = {} if self._released is None else {
            "released_by": self.node, "released": self._released}
        return {
            "version": FORMAT_VERSION,
            "leader": self.node if self._released is None else None,
            **released,
            "since": self._since,
            "updated": now,
            "refresh": self.refresh,
            "last_action": self._last_action,
            "thresholds": self._thresholds,
            "nodes": [asdict(n) for n in self._nodes],
            "decisions": [asdict(d) for d in self._decisions],
        }

    def maybe_write(self, now: float) -> bool:
        """Write if something changed or the refresh is due. Never raises: a
        failed write (no quorum: EACCES) is logged and retried next time."""
        due = self._dirty or self._last_write is None or now - self._last_write >= self.refresh
        if not due:
            return False
        try:
            write_atomic(self.path, json.dumps(self.document(now), indent=1, sort_keys=True),
                         mode=0o644)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc.strerror or exc)
            return False
        self._last_write = now
        self._dirty = False
        self.writes += 1
        return True


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` so that readers see the old or the new
    file, never a part: written to a temporary name beside it (created with
    `mode`, private by default), synced, then renamed over it (pmxcfs
    supports rename; PVE writes its own files this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The published document, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def decisions_from(doc: Mapping[str, Any]) -> list[DecisionRecord]:
    """Decision records of a document, skipping malformed ones."""
    out: list[DecisionRecord] = []
    raw = doc.get("decisions")
    if not isinstance(raw, list):
        return out
    for item in raw:
        if not isinstance(item, dict):
            continue
        try:
            out.append(DecisionRecord(
                time=float(item["time"]), mode=str(item["mode"]), vmid=int(item["vmid"]),
                name=str(item.get("name", "")), source=str(item["source"]),
                target=str(item["target"]), result=str(item["result"]),
                reason=str(item.get("reason", ""))))
        except (KeyError, TypeError, ValueError):
            continue
    return out
