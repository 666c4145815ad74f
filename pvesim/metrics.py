"""What a run is judged by (SIMULATOR.md §4), measured from the physics, never
from what the API published: a balancer is credited for relieving real
contention, not for making the published numbers look good.

All figures are deterministic functions of the simulated run; wall time never
enters them, so two runs with one seed compare equal.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PING_PONG_WINDOW = 3600.0
SERIES_INTERVAL = 60.0


@dataclass
class _Episode:
    start: float
    kind: str  # cpu | memory


@dataclass
class MigrationRecord:
    vmid: int
    source: str
    target: str
    start: float
    end: float
    bytes: int
    ok: bool
    task_type: str
    user: str
    error: str = ""


@dataclass
class NodeFigures:
    seconds_above_cpu: float = 0.0
    seconds_above_mem: float = 0.0
    peak_cpu: float = 0.0
    peak_mem: float = 0.0
    starvation: float = 0.0  # core-seconds
    overcommit_byte_seconds: float = 0.0
    cpu_core_seconds: float = 0.0
    online_seconds: float = 0.0


@dataclass
class Metrics:
    """Recorder driven by the Simulator. `to_dict()` is the JSON export."""

    cpu_max: float = 0.8
    memory_max: float = 0.8
    start: float = 0.0
    now: float = 0.0
    nodes: dict[str, NodeFigures] = field(default_factory=dict)
    migrations: list[MigrationRecord] = field(default_factory=list)
    api: Counter[str] = field(default_factory=Counter)
    api_status: Counter[int] = field(default_factory=Counter)
    episodes_done: list[tuple[str, str, float, float]] = field(default_factory=list)
    open_episodes: dict[tuple[str, str], float] = field(default_factory=dict)
    series_t: list[float] = field(default_factory=list)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _next_sample: float = 0.0
    _left: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    ping_pongs: list[tuple[int, str, float]] = field(default_factory=list)
    starvation_total: float = 0.0

    def add_node(self, name: str) -> None:
        self.nodes.setdefault(name, NodeFigures())
        self.series.setdefault(name, [(0.0, 0.0)] * len(self.series_t))

    # -- physics -----------------------------------------------------------
    def record_node(
        self,
        t: float,
        dt: float,
        name: str,
        cpu_frac: float,
        mem_frac: float,
        starved: float,
        overcommit: float,
        delivered: float,
        online: bool,
    ) -> None:
        """One node over [t, t+dt): utilisation as the physics delivered it."""
        f = self.nodes[name]
        f.starvation += starved
        self.starvation_total += starved
        f.overcommit_byte_seconds += overcommit * dt
        f.cpu_core_seconds += delivered * dt
        if online:
            f.online_seconds += dt
        f.peak_cpu = max(f.peak_cpu, cpu_frac)
        f.peak_mem = max(f.peak_mem, mem_frac)
        for kind, value, limit in (
            ("cpu", cpu_frac, self.cpu_max),
            ("memory", mem_frac, self.memory_max),
        ):
            key = (name, kind)
            above = value > limit
            if above:
                if kind == "cpu":
                    f.seconds_above_cpu += dt
                else:
                    f.seconds_above_mem += dt
                if key not in self.open_episodes:
                    self.open_episodes[key] = t
            elif key in self.open_episodes:
                began = self.open_episodes.pop(key)
                self.episodes_done.append((name, kind, began, t))

    def sample(self, t: float, values: dict[str, tuple[float, float]]) -> None:
        """Time series for the plot, one point per SERIES_INTERVAL."""
        if t < self._next_sample:
            return
        self._next_sample = t + SERIES_INTERVAL
        self.series_t.append(t)
        for name in self.series:
            self.series[name].append(values.get(name, (0.0, 0.0)))

    # -- migrations ----------------------------------------------------------
    def migration_done(self, rec: MigrationRecord) -> None:
        self.migrations.append(rec)
        if not rec.ok:
            return
        # ping-pong: the guest comes back to a node it left within the window
        for node, left_at in self._left.get(rec.vmid, []):
            if node == rec.target and rec.end - left_at <= PING_PONG_WINDOW:
                self.ping_pongs.append((rec.vmid, node, rec.end - left_at))
                break
        hist = self._left.setdefault(rec.vmid, [])
        hist.append((rec.source, rec.end))
        cutoff = rec.end - PING_PONG_WINDOW
        self._left[rec.vmid] = [h for h in hist if h[1] >= cutoff]

    # -- API -------------------------------------------------------------------
    def api_request(self, method: str, template: str, status: int) -> None:
        self.api[f"{method} {template}"] += 1
        self.api_status[status] += 1

    # -- export ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        ok = [m for m in self.migrations if m.ok]
        failed = [m for m in self.migrations if not m.ok]
        episodes = [e for e in self.episodes_done]
        durations = {
            kind: [end - start for (_, k, start, end) in episodes if k == kind]
            for kind in ("cpu", "memory")
        }

        def _r(x: float) -> float:
            return round(x, 6)

        return {
            "simulated_seconds": _r(self.now - self.start),
            "thresholds": {"cpu_max": self.cpu_max, "memory_max": self.memory_max},
            "cpu_starvation_core_seconds": _r(self.starvation_total),
            "node_seconds_above_cpu_max": _r(sum(f.seconds_above_cpu for f in self.nodes.values())),
            "node_seconds_above_memory_max": _r(
                sum(f.seconds_above_mem for f in self.nodes.values())
            ),
            "peak_node_cpu": _r(max((f.peak_cpu for f in self.nodes.values()), default=0.0)),
            "peak_node_memory": _r(max((f.peak_mem for f in self.nodes.values()), default=0.0)),
            "memory_overcommit_byte_seconds": _r(
                sum(f.overcommit_byte_seconds for f in self.nodes.values())
            ),
            "migrations": {
                "count": len(ok),
                "failed": len(failed),
                "started": len(self.migrations),
                "bytes": sum(m.bytes for m in ok),
                "seconds": _r(sum(m.end - m.start for m in ok)),
                "ping_pongs": len(self.ping_pongs),
                "list": [
                    {
                        "vmid": m.vmid,
                        "source": m.source,
                        "target": m.target,
                        "start": _r(m.start),
                        "end": _r(m.end),
                        "bytes": m.bytes,
                        "ok": m.ok,
                        "type": m.task_type,
                        "user": m.user,
                        "error": m.error,
                    }
                    for m in self.migrations
                ],
            },
            "threshold_episodes": {
                kind: {
                    "count": len(d),
                    "total_seconds": _r(sum(d)),
                    "max_seconds": _r(max(d, default=0.0)),
                    "mean_seconds": _r(sum(d) / len(d)) if d else 0.0,
                    "still_open": sorted(n for (n, k) in self.open_episodes if k == kind),
                }
                for kind, d in durations.items()
            },
            "nodes": {
                name: {
                    "seconds_above_cpu_max": _r(f.seconds_above_cpu),
                    "seconds_above_memory_max": _r(f.seconds_above_mem),
                    "peak_cpu": _r(f.peak_cpu),
                    "peak_memory": _r(f.peak_mem),
                    "cpu_starvation_core_seconds": _r(f.starvation),
                    "memory_overcommit_byte_seconds": _r(f.overcommit_byte_seconds),
                    "mean_cpu_cores": _r(f.cpu_core_seconds / f.online_seconds)
                    if f.online_seconds
                    else 0.0,
                }
                for name, f in sorted(self.nodes.items())
            },
            "api_requests": {
                "total": sum(self.api.values()),
                "by_path": dict(sorted(self.api.items())),
                "by_status": {str(k): v for k, v in sorted(self.api_status.items())},
            },
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
