"""The simulated cluster: one `Simulator` composing its concerns.

`Simulator` is the one object everything else talks to. It is driven either
in stepped mode (a test or benchmark calls `advance(seconds)` and nothing
moves in between) or in real time (a server thread calls `advance` with the
wall-clock delta). Every public method takes `self.lock`, so the HTTP server
threads and the clock thread may call it concurrently.

Within `advance` the clock moves in steps of at most `sim.step` seconds, cut
short at every scheduled instant (a migration's end, a pvestatd round, a
scenario event, a backup start…), so results do not depend on how the driver
slices time. At each instant the parts act in a fixed order: scenario
events, migrations ending, the HA stack, backups, pvestatd rounds.

The parts, each in its own module, share one `pvesim.world.World`:
`physics` (delivery and pvestatd), `tasks`, `migrations`, `ha` (HA manager
and CRS), `backups`, `outages` (power and network faults) and `requestlog`;
`workload` builds the nodes and guests. The API (`pvesim.api`) is served
from here with the lock held.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

from pvesim.api import dispatch
from pvesim.backups import Backups
from pvesim.ha import HaManager
from pvesim.metrics import Metrics
from pvesim.migrations import Migrations
from pvesim.outages import Outages
from pvesim.physics import Physics
from pvesim.protocol import ApiRequest, ApiResponse, RequestRecord, SimError
from pvesim.requestlog import RequestLog
from pvesim.scenario import Scenario, load_scenario
from pvesim.specs import SimParams
from pvesim.state import (
    ALL_PRIVILEGES,
    BackupJob,
    Guest,
    HaRule,
    Migration,
    Node,
    PendingHaMigration,
    Task,
    Token,
)
from pvesim.tasks import ROOT, Tasks
from pvesim.workload import build_guests, build_nodes, change_demand
from pvesim.world import World

DEFAULT_TOKENS: dict[str, set[str]] = {
    "pve-balancer@pve!agent": {"Sys.Audit", "VM.Audit", "VM.Migrate"},
    "root@pam!admin": set(ALL_PRIVILEGES),
    "auditor@pve!audit": {"Sys.Audit", "VM.Audit"},
}


class Simulator:
    """A PVE 9 cluster in a box. See docs/simulator.md."""

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        w = self._world = World(scenario, seed)
        self.lock = w.lock
        self.scenario = scenario
        self.seed = seed
        self.params: SimParams = w.params
        self.start_time = w.start_time
        self.cluster_name = w.cluster_name
        self.cpu_max = scenario.cpu_max
        self.memory_max = scenario.memory_max
        self.nodes: dict[str, Node] = w.nodes
        self.guests: dict[int, Guest] = w.guests
        self.options: dict[str, Any] = w.options
        self.pools: dict[str, list[int]] = w.pools
        self.metrics: Metrics = w.metrics
        self._physics = Physics(w)
        self._tasks = Tasks(w)
        self._migrations = Migrations(w, self._tasks)
        self._ha = HaManager(w, self._tasks, self._migrations)
        self._backups = Backups(w, self._tasks)
        self._outages = Outages(w, self._tasks, self._migrations, self._backups, self._ha)
        self._requests = RequestLog(w.metrics)
        self.rules: list[HaRule] = self._ha.rules
        self.backup_jobs: list[BackupJob] = self._backups.jobs
        self._events = sorted(scenario.events, key=lambda e: e.at)
        self._event_i = 0
        build_nodes(w, scenario)
        build_guests(w, scenario)
        self._build_rules_backups()
        self._build_tokens()
        self._ha.master = self.node_names[0]
        self._physics.prefill_rrd()
        self._physics.step(w.now, 0.0, self._migrations.incoming())
        for n in self.nodes.values():
            self._physics.publish(n, w.now)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_file(cls, path: str | Path, seed: int = 0) -> Simulator:
        """Load a scenario YAML file and build a simulator from it."""
        return cls(load_scenario(path), seed=seed)

    def _build_rules_backups(self) -> None:
        for r in self.scenario.rules:
            self.rules.append(
                HaRule(
                    r.rule,
                    r.type,
                    list(r.resources),
                    list(r.nodes),
                    r.affinity,
                    r.strict,
                    r.disable,
                    r.comment,
                )
            )
        for b in self.scenario.backups:
            self._backups.add_job(
                BackupJob(
                    b.id,
                    b.schedule,
                    b.enabled,
                    b.node,
                    b.vmids,
                    b.storage,
                    b.mode,
                    b.seconds_per_guest,
                    b.comment,
                )
            )

    def _build_tokens(self) -> None:
        rng = random.Random(f"pvesim-{self.seed}-tokens")
        self.token_objs: dict[str, Token] = {}
        specs = self.scenario.tokens
        entries: list[tuple[str, str | None, dict[str, set[str]]]]
        if specs is None:
            entries = [(tid, None, {"/": privs}) for tid, privs in DEFAULT_TOKENS.items()]
        else:
            entries = [(t.token_id, t.secret, {p: set(v) for p, v in t.acl.items()}) for t in specs]
        for tid, secret, acl in entries:
            sec = secret or str(uuid.UUID(int=rng.getrandbits(128), version=4))
            self.token_objs[tid] = Token(tid, sec, {p: set(v) for p, v in acl.items()})
        self.tokens: dict[str, str] = {t.token_id: t.secret for t in self.token_objs.values()}

    # ------------------------------------------------------------------ state
    @property
    def now(self) -> float:
        return self._world.now

    @property
    def config_version(self) -> int:
        return self._world.config_version

    @property
    def node_names(self) -> list[str]:
        return self._world.node_names

    @property
    def tasks(self) -> list[Task]:
        """Every task kept, oldest first."""
        return self._tasks.items

    @property
    def migrations(self) -> dict[int, Migration]:
        """Running migrations by vmid."""
        return self._migrations.running

    @property
    def pending_ha(self) -> list[PendingHaMigration]:
        """Migrations the HA stack will start."""
        return self._ha.pending

    @property
    def ha_master(self) -> str:
        return self._ha.master

    @property
    def failure_rate(self) -> float:
        return self._migrations.failure_rate

    @property
    def request_log(self) -> list[RequestRecord]:
        return self._requests.records

    # ------------------------------------------------------------------ queries
    def node(self, name: str) -> Node:
        return self.nodes[name]

    def guest(self, vmid: int) -> Guest:
        return self.guests[vmid]

    def node_reachable(self, name: str) -> bool:
        with self.lock:
            n = self.nodes.get(name)
            return n is not None and n.reachable

    def quorate(self, name: str) -> bool:
        """Whether `name` is in a quorate partition (majority of votes)."""
        return self._world.quorate(name)

    def guests_on(self, node: str) -> list[Guest]:
        return self._world.guests_on(node)

    def find_task(self, upid: str) -> Task | None:
        return self._tasks.find(upid)

    def running_migration(self, vmid: int) -> Migration | None:
        return self.migrations.get(vmid)

    def ha_state(self, g: Guest) -> str:
        return self._ha.state(g)

    def node_ha_status(self, name: str) -> str:
        return self._ha.node_status(name)

    def blocking_ha(self, g: Guest, target: str) -> list[dict[str, str]]:
        """HA resources on `target` that a negative resource-affinity rule
        keeps apart from `g` (both must be HA-managed, as in PVE)."""
        return self._ha.blocking(g, target)

    def dependent_ha(self, g: Guest) -> list[str]:
        """HA resources bound to `g` by an enabled positive resource-affinity rule."""
        return self._ha.dependent(g)

    def backup_next_run(self, job_id: str) -> float:
        return self._backups.next_run(job_id)

    # ------------------------------------------------------------------ API
    def handle(self, req: ApiRequest) -> ApiResponse:
        """The PVE API (see pvesim.api)."""
        with self.lock:
            return dispatch(self, req)

    def log_request(self, rec: RequestRecord, template: str) -> None:
        self._requests.add(rec, template)

    # ------------------------------------------------------------------ clock
    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward by `seconds`, running physics,
        pvestatd rounds, migrations, HA, backups and scenario events."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        w = self._world
        with self.lock:
            end = w.now + seconds
            self._due(w.now)
            while w.now < end - 1e-9:
                wake = self._next_wake()
                dt = min(self.params.step, end - w.now)
                if wake is not None and w.now < wake < w.now + dt:
                    dt = wake - w.now
                self._physics.step(w.now, dt, self._migrations.incoming())
                w.now += dt
                self._due(w.now)
            w.now = max(w.now, end)
            self.metrics.now = w.now

    def run_until(self, t: float) -> None:
        self.advance(max(0.0, t - self.now))

    def _next_wake(self) -> float | None:
        cands = self._physics.wakes()
        cands.extend(self._migrations.wakes())
        cands.extend(self._ha.wakes())
        cands.extend(self._backups.wakes())
        if self._event_i < len(self._events):
            cands.append(self.start_time + self._events[self._event_i].at)
        later = [c for c in cands if c > self.now + 1e-9]
        return min(later) if later else None

    def _due(self, t: float) -> None:
        eps = 1e-9
        while (
            self._event_i < len(self._events)
            and self.start_time + self._events[self._event_i].at <= t + eps
        ):
            ev = self._events[self._event_i]
            self._event_i += 1
            self._apply_event(ev.action, ev.args)
        self._migrations.due(t)
        self._ha.due(t)
        self._backups.due(t)
        self._physics.due(t)

    # ------------------------------------------------------------------ controls
    def migrate(
        self,
        vmid: int,
        target: str,
        user: str = ROOT,
        online: bool | None = None,
        with_local_disks: bool = False,
        served_by: str | None = None,
        restart: bool = False,
    ) -> str:
        """Start a migration as `POST .../migrate` would; returns the UPID.
        Raises SimError with PVE's message when PVE would refuse."""
        with self.lock:
            g = self.guests.get(vmid)
            if g is None:
                raise SimError(f"unable to find configuration file for VM {vmid} - no such machine")
            self.check_migration(g, target, online, with_local_disks, restart)
            if g.ha:
                return self._ha.request_migration(g, target, user)
            return self._migrations.start(g, target, user, with_local_disks).upid

    def check_migration(
        self,
        g: Guest,
        target: str,
        online: bool | None,
        with_local_disks: bool = False,
        restart: bool = False,
    ) -> None:
        """PVE's refusals, in the order PVE checks them (target is local →
        quorum → target exists → lock → running without online → local
        devices/disks → HA rules)."""
        self._migrations.check(g, target, online, with_local_disks, restart)
        self._ha.check_rules(g, target)

    def fail_next_migration(self, vmid: int, reason: str = "migration problems") -> None:
        """Test/fault hook: the next migration of `vmid` fails midway."""
        with self.lock:
            self._migrations.fail_next(vmid, reason)

    def set_failure_rate(self, rate: float) -> None:
        with self.lock:
            self._migrations.failure_rate = rate

    def power_off(self, name: str) -> None:
        """Hard power loss of a node."""
        with self.lock:
            self._outages.power_off(name)

    def power_on(self, name: str) -> None:
        with self.lock:
            self._outages.power_on(name)

    def cut_network(self, name: str) -> None:
        """The node loses its cluster network: no quorum, unreachable from
        the others; its guests keep running until the HA watchdog fences it."""
        with self.lock:
            self._outages.cut_network(name)

    def restore_network(self, name: str) -> None:
        with self.lock:
            self._outages.restore_network(name)

    def set_maintenance(self, name: str, on: bool) -> None:
        """`ha-manager crm-command node-maintenance enable|disable NODE`."""
        with self.lock:
            self._ha.set_maintenance(name, on)

    def set_demand(self, vmid: int, cpu: float | None = None, mem: float | None = None) -> None:
        """Change a guest's demand from now on (replaces trace replay)."""
        with self.lock:
            change_demand(self.guests[vmid], self.now, cpu, mem)

    def start_backup(self, job_id: str | None = None, node: str | None = None) -> list[str]:
        """Run a backup job now (or an ad-hoc vzdump of every guest on
        `node`); returns the vzdump UPIDs, one per node."""
        with self.lock:
            return self._backups.start(job_id, node)

    # ------------------------------------------------------------------ events
    def _apply_event(self, action: str, a: dict[str, Any]) -> None:
        if action == "power_off":
            self.power_off(a["node"])
        elif action == "power_on":
            self.power_on(a["node"])
        elif action == "cut_network":
            self.cut_network(a["node"])
        elif action == "restore_network":
            self.restore_network(a["node"])
        elif action == "maintenance":
            self.set_maintenance(a["node"], bool(a.get("on", True)))
        elif action == "set_demand":
            self.set_demand(a["vmid"], a.get("cpu"), a.get("mem"))
        elif action == "set_failure_rate":
            self.set_failure_rate(float(a["rate"]))
        elif action == "backup":
            self.start_backup(a.get("job"), a.get("node"))
        elif action == "migrate":
            g = self.guests.get(a["vmid"])
            try:
                self.migrate(
                    a["vmid"],
                    a["target"],
                    user=str(a.get("user", ROOT)),
                    online=bool(a.get("online", g is not None and g.running)),
                )
            except SimError as exc:
                # a foreign client's refused request: visible as a failed task
                node = g.node if g is not None else self.node_names[0]
                task = self._tasks.new(node, "qmigrate", str(a["vmid"]), str(a.get("user", ROOT)))
                self._tasks.end(task, exc.message)
