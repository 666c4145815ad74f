"""A soak: simulated days of the lab-three-agents cluster under random
faults, with the real agent in process (virtual time, so a week takes
minutes).

Drawn at random from a seeded generator (so a run is reproducible and a
failure names its seed and virtual time): guest demand changes that make
and clear hotspots; API fault episodes (every pvesim fault kind on every
endpoint the agent uses, with a probability and a duration); migrations
that fail midway; nodes in HA maintenance; ad-hoc backups besides the
nightly job; foreign migrations started by root; leadership lost and
regained between cycles (`FlakyLock`).

Checked on every cycle, against the simulator (not the agent's words):
- at most one migration at a time (no agent POST while any migration
  runs, its own or a foreign one);
- none without the lock;
- none within `backup_guard` before a backup, nor while one runs;
- none onto a node in maintenance;
- no target above memory_max when its migration ends (unless something
  else changed on that node meanwhile);
- no cycle failed with an exception, no traceback, no token secret in any
  journal line;
- the agent's own state does not grow with time: its containers stay
  bounded by the number of guests, and the count of live pve_balancer
  objects after the first day stays flat.
"""

from __future__ import annotations

import gc
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from pve_balancer.config import Config
from pvesim.faults import KINDS
from pvesim.protocol import SimError
from simlab.inprocess import InProcessLab, simulator
from tests.campaign.endpoints import ENDPOINTS
from tests.campaign.inprocess_campaign import FlakyLock, Journal, Witness
from tests.scenarios import scenario_path

DAY = 86400.0
INTERVAL = 5.0
CONFIG = Config(seed=1, interval=INTERVAL)
GiB = 1 << 30


def soak_scenario() -> dict[str, Any]:
    doc = yaml.safe_load(scenario_path("lab-three-agents").read_text(encoding="utf-8"))
    doc.pop("start_time", None)
    doc["duration"] = 8 * DAY
    doc["backup_jobs"] = [{"id": "nightly", "schedule": "02:30", "storage": "pbs",
                           "seconds_per_guest": 20}]
    return doc


@dataclass
class Driver:
    """Draws the week's events and keeps what the checks need to know."""

    lab: InProcessLab
    rng: random.Random
    witness: Witness
    fault_until: float = 0.0
    fault_id: int | None = None
    maint_since: float = 0.0
    maint_until: float = 0.0
    maint_node: str | None = None
    failure_until: float = 0.0
    disturbed: dict[str, list[float]] = field(default_factory=dict)
    """Per node, times something other than the agent changed its load."""
    episodes: list[str] = field(default_factory=list)

    @property
    def sim(self) -> Any:
        return self.lab.sim

    def _disturb(self, node: str) -> None:
        self.disturbed.setdefault(node, []).append(self.sim.now)

    def step(self) -> None:
        now = self.sim.now
        r = self.rng
        if r.random() < INTERVAL / 1800:  # a demand change every ~30 min
            g = r.choice(list(self.sim.guests.values()))
            top = min(g.maxmem / GiB, 20.0)
            self.sim.set_demand(g.vmid, cpu=r.uniform(0.1, 1.9), mem=r.uniform(1.0, top) * GiB)
            self._disturb(g.node)
        injector = self.lab.faults
        assert injector is not None
        if self.fault_id is not None and now >= self.fault_until:
            injector.remove(self.fault_id)
            self.fault_id = None
        if self.fault_id is None and r.random() < INTERVAL / 1200:  # ~every 20 min
            endpoint = r.choice(ENDPOINTS)
            kind = r.choice(KINDS)
            spec: dict[str, Any] = {"kind": kind, "method": endpoint.method,
                                    "path": endpoint.path,
                                    "probability": r.choice([0.3, 0.7, 1.0])}
            if kind == "missing_fields":
                spec["fields"] = (endpoint.field,)
            if kind == "latency":
                spec["seconds"] = r.uniform(0.5, 6.0)
            if kind == "timeout":
                spec["seconds"] = 30.0
            self.fault_id = injector.add(**spec).id
            self.fault_until = now + r.uniform(60, 1200)
            self.episodes.append(f"{now:.0f} {kind} {endpoint.name} p={spec['probability']}")
        if self.maint_node is not None and now >= self.maint_until:
            self.sim.set_maintenance(self.maint_node, False)
            self.witness.maintenance.append((self.maint_node, self.maint_since, now))
            self.maint_node = None
        if self.maint_node is None and r.random() < INTERVAL / (6 * 3600):
            self.maint_node = r.choice(self.sim.node_names)
            self.maint_since = now
            self.maint_until = now + r.uniform(600, 3600)
            self.sim.set_maintenance(self.maint_node, True)
        if self.failure_until and now >= self.failure_until:
            self.sim.set_failure_rate(0.0)
            self.failure_until = 0.0
        if not self.failure_until and r.random() < INTERVAL / (8 * 3600):
            self.sim.set_failure_rate(r.choice([0.5, 1.0]))
            self.failure_until = now + r.uniform(600, 2400)
        if r.random() < INTERVAL / (6 * 3600):
            node = r.choice(self.sim.node_names)
            self.sim.start_backup(node=node)
        if r.random() < INTERVAL / (4 * 3600):
            g = r.choice(list(self.sim.guests.values()))
            target = r.choice([n for n in self.sim.node_names if n != g.node])
            try:
                self.sim.migrate(g.vmid, target, user="root@pam", online=True)
                self._disturb(g.node)
                self._disturb(target)
            except SimError:
                pass

    def open_maintenance(self) -> list[tuple[str, float, float]]:
        if self.maint_node is None:
            return []
        return [(self.maint_node, self.maint_since, math.inf)]


def agent_state_size(lab: InProcessLab) -> int:
    """Entries in the agent's containers (its memory between cycles)."""
    total = 0
    for owner in (lab.agent, lab.agent.estimator):
        for value in vars(owner).values():
            if isinstance(value, dict | list | set | frozenset | tuple):
                total += len(value)
    return total


def live_agent_objects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects()
               if str(getattr(type(o), "__module__", "")).startswith("pve_balancer"))


@dataclass
class Checks:
    lab: InProcessLab
    witness: Witness
    lock: FlakyLock
    driver: Driver
    seen: int = 0
    running: dict[int, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def cycle(self) -> None:
        sim = self.lab.sim
        log = sim.request_log
        new = [r for r in log[self.seen:] if r.method == "POST" and r.path.endswith("/migrate")
               and r.token_id == "pve-balancer@pve!agent"]
        self.seen = len(log)
        if new:
            self._check_posts(new)
        current = {vmid: m for vmid, m in sim.migrations.items()
                   if m.task.user == "pve-balancer@pve!agent"}
        for vmid, m in self.running.items():
            if vmid not in current and not m["failed"]:
                target = sim.node(m["target"])
                frac = target.live_mem / target.memory
                quiet = not any(m["start"] - INTERVAL <= t <= sim.now
                                for t in self.driver.disturbed.get(m["target"], []))
                ok = sim.guest(vmid).node == m["target"]
                if quiet and ok and frac > CONFIG.memory_max:
                    self.problems.append(f"vm {vmid} left {m['target']} at {frac:.3f} memory "
                                         f"(> {CONFIG.memory_max}) at {sim.now:.0f}")
        self.running = {vmid: {"target": m.target, "start": m.start,
                               "failed": m.fail_at is not None}
                        for vmid, m in current.items()}


    def _check_posts(self, new: list[Any]) -> None:
        sim = self.lab.sim
        w = self.witness
        moves = w.migrations()
        vzdumps = [t for t in sim.tasks if t.type == "vzdump"]
        maint = list(w.maintenance) + self.driver.open_maintenance()
        for p in new:
            vmid = int(p.path.split("/")[4])
            for m in moves:
                end = m["end"] if m["end"] is not None else math.inf
                if m["vmid"] != vmid and m["start"] < p.time < end:
                    self.problems.append(f"POST for vm {vmid} at {p.time:.0f} while vm "
                                         f"{m['vmid']} ({m['user']}) migrated")
            if not self.lock.holding_at(p.time):
                self.problems.append(f"POST for vm {vmid} at {p.time:.0f} without the lock")
            for b in vzdumps:
                end = b.endtime if b.endtime is not None else math.inf
                if b.starttime - CONFIG.backup_guard <= p.time < end:
                    self.problems.append(f"POST for vm {vmid} at {p.time:.0f}: backup "
                                         f"{b.starttime}..{end} (guard "
                                         f"{CONFIG.backup_guard:.0f} s)")
            m_now = sim.migrations.get(vmid)
            target = m_now.target if m_now is not None else None
            for node, a, b in maint:
                if target == node and a <= p.time < b:
                    self.problems.append(f"vm {vmid} onto {node} in maintenance at "
                                         f"{p.time:.0f}")


def soak(seed: int, days: float) -> tuple[list[str], Journal, Driver, list[int], list[int]]:
    doc = soak_scenario()
    sim = simulator(doc, seed=seed)
    lock = FlakyLock(sim, random.Random(seed + 1), p_lose=0.002)
    lab = InProcessLab.attach(sim, CONFIG, election=lock, faults_seed=seed)
    rng = random.Random(seed)
    witness = Witness(lab)
    driver = Driver(lab, rng, witness)
    checks = Checks(lab, witness, lock, driver)
    journal = Journal(lab.sim)
    sizes: list[int] = []
    objects: list[int] = []
    end = lab.sim.now + days * DAY
    next_day = lab.sim.now
    with journal.capture():
        while lab.sim.now < end:
            driver.step()
            lab.run(INTERVAL)
            checks.cycle()
            if checks.problems:
                break
            if lab.sim.now >= next_day:
                sizes.append(agent_state_size(lab))
                objects.append(live_agent_objects())
                next_day += DAY
    failed = [s for _, s in lab.sentences if s.startswith("cycle failed")]
    secret = lab.sim.tokens["pve-balancer@pve!agent"]
    problems = list(checks.problems) + failed[:3]
    if secret in journal.text():
        problems.append("the token secret is in the journal")
    if "Traceback" in journal.text():
        problems.append("a traceback in the journal")
    return problems, journal, driver, sizes, objects


def _verdict(seed: int, days: float) -> None:
    problems, journal, driver, sizes, objects = soak(seed, days)
    lab = driver.lab
    context = (f"seed {seed}: {len(lab.migrate_posts())} migration POSTs, "
               f"{len(driver.episodes)} fault episodes; state sizes {sizes}; "
               f"pve_balancer objects {objects}")
    assert problems == [], f"{problems}\n{context}\n" + journal.text()[-6000:]
    assert len(lab.migrate_posts()) >= days, f"too quiet to prove anything: {context}"
    guests = len(lab.sim.guests)
    assert max(sizes) <= sizes[0] + 8 * guests, context
    if len(objects) >= 3:
        assert objects[-1] <= objects[1] * 1.1 + 100, context
    assert logging.WARNING in {r.level for r in journal.records}, "no fault was ever noticed"


def test_soak_six_hours() -> None:
    """Six simulated hours (the default run's share, about 20 s)."""
    _verdict(seed=7, days=0.25)


@pytest.mark.slow
def test_soak_one_week() -> None:
    """One simulated week (13 minutes measured on a loaded 2-core machine;
    seed 11: 17 migrations, 333 fault episodes, agent state flat)."""
    _verdict(seed=11, days=7.0)
