"""What the in-process campaign cases share (the agent and the simulator in
one process, in the simulator's virtual time; see `simlab.inprocess`).

- `Journal`: the agent's log records as the shipped handler would pass
  them: the same two filters (`journal.RepeatLimiter` on the simulator's
  clock, `journal.DisplaySafe`), formatted with their tracebacks, each
  stamped with the virtual time it was written at.
- `FlakyLock`: an `Election` (the agent's own seam for who leads) that
  loses and regains leadership between cycles at random, and keeps the
  intervals it was held, so "no migration without the lock" can be
  checked against the request log.
- `Witness`: the verdicts, from the simulator's request log, its migration
  list and its physics (not from what the agent says about itself).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pve_balancer.journal import DisplaySafe, RepeatLimiter
from pvesim.cluster import Simulator
from simlab.inprocess import AGENT_TOKEN, InProcessLab


@dataclass(frozen=True)
class Record:
    t: float
    level: int
    text: str  # the formatted line, traceback included


class _Collect(logging.Handler):
    def __init__(self, sim: Simulator, out: list[Record]) -> None:
        super().__init__(logging.DEBUG)
        self.sim = sim
        self.out = out
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(Record(self.sim.now, record.levelno, self.format(record)))


@dataclass
class Journal:
    sim: Simulator
    records: list[Record] = field(default_factory=list)

    @contextmanager
    def capture(self) -> Iterator[Journal]:
        handler = _Collect(self.sim, self.records)
        handler.addFilter(RepeatLimiter(clock=lambda: self.sim.now))
        handler.addFilter(DisplaySafe())
        logger = logging.getLogger("pve_balancer")
        old_level, old_propagate = logger.level, logger.propagate
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        # Only this journal sees the records: a test runner's log capture
        # would keep every record (and the frames of its traceback) alive,
        # which the soak would count as the agent's memory growing.
        logger.propagate = False
        try:
            yield self
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate

    def warnings(self, start: float = float("-inf"), end: float = float("inf")) -> list[Record]:
        return [r for r in self.records if r.level >= logging.WARNING and start <= r.t <= end]

    def text(self) -> str:
        return "\n".join(f"{r.t:.1f} {r.text}" for r in self.records)


class FlakyLock:
    """Leadership lost at a tick with probability `p_lose` for 1..`max_out`
    cycles, then regained. `held` lists [since, until) in virtual time."""

    def __init__(self, sim: Simulator, rng: random.Random, p_lose: float = 0.01,
                 max_out: int = 6) -> None:
        self.sim = sim
        self.rng = rng
        self.p_lose = p_lose
        self.max_out = max_out
        self._out = 0
        self._leader = False
        self.held: list[list[float]] = []
        self.confirms: list[float] = []

    def tick(self, now: float) -> str | None:
        if self._leader and self.rng.random() < self.p_lose:
            self._leader = False
            self._out = self.rng.randint(1, self.max_out)
            self.held[-1][1] = now
            return "lost the leader lock: taken over (campaign)"
        if not self._leader:
            if self._out > 0:
                self._out -= 1
                return None
            self._leader = True
            self.held.append([now, float("inf")])
            return "became leader (campaign lock)"
        return None

    @property
    def is_leader(self) -> bool:
        return self._leader

    def confirm(self, now: float) -> bool:
        if self._leader:
            self.confirms.append(now)
        return self._leader

    def release(self) -> None:
        if self._leader:
            self.held[-1][1] = self.sim.now
        self._leader = False

    def describe(self) -> str:
        return "leader" if self._leader else "standby (leader: elsewhere)"

    def holding_at(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.held)


@dataclass
class Witness:
    """Verdicts over the whole run of `lab`."""

    lab: InProcessLab
    maintenance: list[tuple[str, float, float]] = field(default_factory=list)
    """(node, since, until) the driver put nodes into maintenance."""

    @property
    def sim(self) -> Simulator:
        return self.lab.sim

    def agent_posts(self) -> list[Any]:
        return [r for r in self.sim.request_log if r.method == "POST"
                and r.path.endswith("/migrate") and r.token_id == AGENT_TOKEN]

    def migrations(self) -> list[dict[str, Any]]:
        """Every migration, ended and running: vmid, source, target,
        start, end (None while running), user."""
        done = [dict(m) for m in self.sim.metrics.to_dict()["migrations"]["list"]]
        running = [{"vmid": m.vmid, "source": m.source, "target": m.target,
                    "start": m.start, "end": None, "user": m.task.user}
                   for m in self.sim.migrations.values()]
        return done + running

    def agent_migrations(self) -> list[dict[str, Any]]:
        return [m for m in self.migrations() if m["user"] == AGENT_TOKEN]

    def posts_while_another_ran(self) -> list[str]:
        out = []
        moves = self.migrations()
        for post in self.agent_posts():
            for m in moves:
                end = m["end"] if m["end"] is not None else float("inf")
                if m["start"] < post.time - 0.5 and post.time < end:
                    out.append(f"POST {post.path} at {post.time:.1f} while vm {m['vmid']} "
                               f"({m['user']}) migrated from {m['start']:.1f}")
        return out

    def overlapping_agent_migrations(self) -> list[str]:
        out = []
        moves = sorted(self.agent_migrations(), key=lambda m: m["start"])
        for a, b in itertools.pairwise(moves):
            if a["end"] is None or b["start"] < a["end"]:
                out.append(f"vm {b['vmid']} at {b['start']:.1f} while vm {a['vmid']} ran")
        return out

    def onto_maintenance(self) -> list[str]:
        return [f"vm {m['vmid']} onto {m['target']} at {m['start']:.1f} (maintenance "
                f"{a:.0f}..{b:.0f})"
                for m in self.agent_migrations() for node, a, b in self.maintenance
                if m["target"] == node and a <= m["start"] < b]

    def within_backup_guard(self, guard: float) -> list[str]:
        out = []
        backups = [t for t in self.sim.tasks if t.type == "vzdump"]
        for post in self.agent_posts():
            for b in backups:
                end = b.endtime if b.endtime is not None else float("inf")
                if b.starttime - guard <= post.time < end:
                    out.append(f"POST {post.path} at {post.time:.1f}: backup {b.upid} "
                               f"{b.starttime:.0f}..{end:.0f} (guard {guard:.0f} s)")
        return out

    def without_lock(self, lock: FlakyLock) -> list[str]:
        return [f"POST {p.path} at {p.time:.1f} without the lock"
                for p in self.agent_posts() if not lock.holding_at(p.time)]
