"""The simulated cluster: state, physics, tasks, HA, and the clock.

`Simulator` is the one object everything else talks to. It is driven either
in stepped mode (a test or benchmark calls `advance(seconds)` and nothing
moves in between) or in real time (a server thread calls `advance` with the
wall-clock delta). Every public method takes `self.lock`, so the HTTP server
threads and the clock thread may call it concurrently.

Within `advance` the clock moves in steps of at most `sim.step` seconds, cut
short at every scheduled instant (a migration's end, a pvestatd round, a
scenario event, a backup start…), so results do not depend on how the driver
slices time. Physics within a step is constant demand, fair-share delivery.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvesim.api import dispatch
from pvesim.demand import ConstantDemand, Demand, StepDemand, TraceDemand
from pvesim.metrics import Metrics, MigrationRecord
from pvesim.protocol import ApiRequest, ApiResponse, RequestRecord, SimError
from pvesim.scenario import (
    GuestSpec,
    Scenario,
    ScenarioError,
    load_scenario,
    next_run,
)
from pvesim.state import (
    ALL_PRIVILEGES,
    MIB,
    BackupJob,
    Guest,
    HaRule,
    Migration,
    Node,
    PendingHaMigration,
    Task,
    Token,
)
from pvesim.traces import Trace, available_vms, load_traces

HZ = 100  # kernel clock ticks per second (pstart is in ticks since boot)
MAX_HA_WORKERS = 4  # PVE's LRM max_workers default
HA_ROUND = 10.0  # CRM round
ROOT = "root@pam"

DEFAULT_TOKENS: dict[str, set[str]] = {
    "pve-balancer@pve!agent": {"Sys.Audit", "VM.Audit", "VM.Migrate"},
    "root@pam!admin": set(ALL_PRIVILEGES),
    "auditor@pve!audit": {"Sys.Audit", "VM.Audit"},
}


@dataclass
class _BackupRun:
    job: str
    node: str
    task: Task
    queue: list[int]
    current: int | None = None
    current_end: float = 0.0
    per: float = 60.0  # seconds per guest
    errors: list[str] = field(default_factory=list)


class Simulator:
    """A PVE 9 cluster in a box. See docs/simulator.md."""

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self.scenario = scenario
        self.seed = seed
        self.params = scenario.sim
        self.start_time = float(scenario.start_time)
        self.now = self.start_time
        self.cluster_name = scenario.cluster_name
        self.cpu_max = scenario.cpu_max
        self.memory_max = scenario.memory_max
        self.failure_rate = self.params.migration_failure_rate
        self._rng = random.Random(f"pvesim-{seed}-migrations")
        self._pid_rng = random.Random(f"pvesim-{seed}-pids")
        self.nodes: dict[str, Node] = {}
        self.guests: dict[int, Guest] = {}
        self.tasks: list[Task] = []  # oldest first
        self._task_index: dict[str, Task] = {}
        self.migrations: dict[int, Migration] = {}
        self.pending_ha: list[PendingHaMigration] = []
        self.rules: list[HaRule] = []
        self.options: dict[str, Any] = dict(scenario.options)
        self.backup_jobs: list[BackupJob] = []
        self._backup_next: dict[str, float] = {}
        self._backup_runs: list[_BackupRun] = []
        self.pools: dict[str, list[int]] = dict(scenario.pools)
        self.request_log: list[RequestRecord] = []
        self.metrics = Metrics(
            cpu_max=self.cpu_max, memory_max=self.memory_max, start=self.now, now=self.now
        )
        self.config_version = 1
        self._by_node: dict[str, list[Guest]] | None = None
        self._recover_at: dict[int, float] = {}  # vmid → HA recovery time
        self._self_fence_at: dict[str, float] = {}
        self._ha_home: dict[int, str] = {}  # guest moved away by maintenance → its home
        self._force_fail: dict[int, str] = {}
        self._ha_round = self.now + HA_ROUND
        self._imbalance_rounds = 0
        self._events = sorted(scenario.events, key=lambda e: e.at)
        self._event_i = 0
        self._build_nodes()
        self._build_guests()
        self._build_rules_backups()
        self._build_tokens()
        self.ha_master = self.node_names[0]
        self._prefill_rrd()
        self._physics(self.now, 0.0)
        for n in self.nodes.values():
            self._publish_node(n, self.now)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_file(cls, path: str | Path, seed: int = 0) -> Simulator:
        """Load a scenario YAML file and build a simulator from it."""
        return cls(load_scenario(path), seed=seed)

    def _build_nodes(self) -> None:
        for i, ns in enumerate(self.scenario.nodes):
            node = Node(
                name=ns.name,
                nodeid=i + 1,
                cores=ns.cores,
                memory=ns.memory,
                base_mem=ns.base_memory,
                ip=f"10.10.10.{11 + i}",
                powered=ns.powered,
                network=ns.network,
                maintenance=ns.maintenance,
                boot_time=self.now - 86400 * (3 + i),
                # pvestatd rounds are not aligned across nodes
                stat_phase=(i * 3.7) % self.params.stat_interval,
            )
            node.next_publish = self.now + node.stat_phase
            self.nodes[ns.name] = node
            self.metrics.add_node(ns.name)

    @property
    def node_names(self) -> list[str]:
        return list(self.nodes)

    def _make_demand(self, spec: GuestSpec, traces: dict[int, Trace]) -> Demand:
        d = spec.demand
        mem = d.mem if d.mem is not None else spec.memory // 2
        if d.kind == "trace":
            return TraceDemand(
                traces[d.trace_vm], self.start_time, d.offset, d.cpu_scale, d.mem_scale
            )
        if d.kind == "steps":
            return StepDemand(
                d.cpu,
                float(mem),
                [
                    (self.start_time + at, c, None if m is None else float(m))
                    for at, c, m in d.steps
                ],
                [
                    (self.start_time + a, self.start_time + b, c, None if m is None else float(m))
                    for a, b, c, m in d.spikes
                ],
            )
        return ConstantDemand(d.cpu, float(mem))

    def _build_guests(self) -> None:
        sc = self.scenario
        specs = list(sc.guests)
        trace_vms = {g.demand.trace_vm for g in specs if g.demand.kind == "trace"}
        gen = sc.generate
        gen_rng = random.Random(
            f"pvesim-{self.seed if gen is None or gen.seed is None else gen.seed}-gen"
        )
        chosen: list[int] = []
        if gen is not None:
            if gen.vm_ids:
                chosen = list(gen.vm_ids)[: gen.count]
            else:
                pool = available_vms(sc.trace_file)
                if gen.count > len(pool):
                    raise ScenarioError(
                        f"generate_from_traces.count: {gen.count} > {len(pool)} VMs in the trace"
                    )
                chosen = sorted(gen_rng.sample(pool, gen.count))
            trace_vms |= set(chosen)
        traces = load_traces(sorted(trace_vms), sc.trace_file) if trace_vms else {}
        for spec in specs:
            self._add_guest(spec, self._make_demand(spec, traces))
        if gen is not None:
            nodes = gen.nodes or self.node_names
            vmid = gen.vmid_start
            for i, vm in enumerate(chosen):
                while vmid in self.guests:
                    vmid += 1
                tr = traces[vm]
                node = (
                    nodes[i % len(nodes)]
                    if gen.placement == "round_robin"
                    else gen_rng.choice(nodes)
                )
                offset = gen_rng.uniform(0, tr.span) if gen.random_offset else 0.0
                maxmem = tr.mem_capacity
                if gen.max_memory is not None:
                    maxmem = min(maxmem, gen.max_memory)
                ha = gen_rng.random() < gen.ha_fraction
                spec = GuestSpec(
                    vmid=vmid,
                    node=node,
                    name=f"{gen.name_prefix}-{vm:03d}",
                    cores=tr.vcpus,
                    memory=maxmem,
                    ha=ha,
                )
                demand = TraceDemand(tr, self.start_time, offset, gen.cpu_scale, gen.mem_scale)
                self._add_guest(spec, demand)
                vmid += 1

    def _add_guest(self, spec: GuestSpec, demand: Demand) -> None:
        g = Guest(
            vmid=spec.vmid,
            name=spec.name,
            type=spec.type,
            node=spec.node,
            vcpus=spec.cores,
            maxmem=spec.memory,
            demand=demand,
            status="stopped" if spec.template else spec.status,
            template=spec.template,
            lock=spec.lock,
            tags=list(spec.tags),
            ha=spec.ha,
            local_disks=list(spec.local_disks),
            local_resources=list(spec.local_resources),
            pool=spec.pool,
            start_time=self.now - 3600 * 24,
            pid=self._new_pid(),
        )
        if not self.nodes[g.node].powered:
            g.status = "stopped"
        self.guests[g.vmid] = g
        if g.pool:
            self.pools.setdefault(g.pool, [])
            if g.vmid not in self.pools[g.pool]:
                self.pools[g.pool].append(g.vmid)
        self._by_node = None

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
            job = BackupJob(
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
            self.backup_jobs.append(job)
            self._backup_next[job.id] = next_run(job.schedule, self.now)

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
        n = self.nodes.get(name)
        if n is None or not n.powered:
            return False
        if not n.network:
            return len(self.nodes) == 1
        members = sum(1 for x in self.nodes.values() if x.reachable)
        return members * 2 > len(self.nodes)

    def guests_on(self, node: str) -> list[Guest]:
        if self._by_node is None:
            idx: dict[str, list[Guest]] = {n: [] for n in self.nodes}
            for g in self.guests.values():
                idx[g.node].append(g)
            self._by_node = idx
        return self._by_node[node]

    def find_task(self, upid: str) -> Task | None:
        return self._task_index.get(upid)

    def running_migration(self, vmid: int) -> Migration | None:
        return self.migrations.get(vmid)

    # ------------------------------------------------------------------ API
    def handle(self, req: ApiRequest) -> ApiResponse:
        """The PVE API (see pvesim.api)."""
        with self.lock:
            return dispatch(self, req)

    # ------------------------------------------------------------------ clock
    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward by `seconds`, running physics,
        pvestatd rounds, migrations, HA, backups and scenario events."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self.lock:
            end = self.now + seconds
            self._due(self.now)
            while self.now < end - 1e-9:
                wake = self._next_wake()
                dt = min(self.params.step, end - self.now)
                if wake is not None and self.now < wake < self.now + dt:
                    dt = wake - self.now
                self._physics(self.now, dt)
                self.now += dt
                self._due(self.now)
            self.now = max(self.now, end)
            self.metrics.now = self.now

    def run_until(self, t: float) -> None:
        self.advance(max(0.0, t - self.now))

    def _next_wake(self) -> float | None:
        cands: list[float] = [n.next_publish for n in self.nodes.values() if n.powered]
        cands.extend(m.end if m.fail_at is None else m.fail_at for m in self.migrations.values())
        cands.extend(p.at for p in self.pending_ha)
        cands.extend(self._backup_next.values())
        cands.extend(r.current_end for r in self._backup_runs)
        cands.extend(self._recover_at.values())
        cands.extend(self._self_fence_at.values())
        if self._ha_rounds_needed():
            cands.append(self._ha_round)
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
        for vmid, m in list(self.migrations.items()):
            if m.fail_at is not None and m.fail_at <= t + eps:
                self._finish_migration(vmid, ok=False, reason=m.fail_reason)
            elif m.end <= t + eps:
                self._finish_migration(vmid, ok=True)
        for node, at in list(self._self_fence_at.items()):
            if at <= t + eps:
                del self._self_fence_at[node]
                self._self_fence(node)
        for vmid, at in list(self._recover_at.items()):
            if at <= t + eps:
                del self._recover_at[vmid]
                self._recover(vmid)
        if self._ha_round <= t + eps:
            self._ha_round = t + HA_ROUND
            if self._ha_rounds_needed():
                self._failback()
            if self._auto_rebalance_on():
                self._crs_rebalance()
        if self.pending_ha:
            self._run_pending_ha(t)
        for job in self.backup_jobs:
            nxt = self._backup_next[job.id]
            if nxt <= t + eps:
                self._backup_next[job.id] = next_run(job.schedule, nxt)
                if job.enabled:
                    self.start_backup(job.id)
        for run in list(self._backup_runs):
            if run.current_end <= t + eps:
                self._backup_step(run)
        for n in self.nodes.values():
            if n.powered and n.next_publish <= t + eps:
                self._publish_node(n, t)
                n.next_publish += self.params.stat_interval
                if n.next_publish <= t:
                    n.next_publish = t + self.params.stat_interval

    # ------------------------------------------------------------------ physics
    def _physics(self, t: float, dt: float) -> None:
        incoming: dict[str, int] = {}
        for m in self.migrations.values():
            incoming[m.target] = incoming.get(m.target, 0) + m.mem_bytes
        samples: dict[str, tuple[float, float]] = {}
        for name, node in self.nodes.items():
            if not node.powered:
                node.live_cpu = node.live_demand = 0.0
                node.live_mem = 0
                self.metrics.record_node(t, dt, name, 0.0, 0.0, 0.0, 0.0, 0.0, False)
                samples[name] = (0.0, 0.0)
                continue
            guests = [g for g in self.guests_on(name) if g.status == "running"]
            demands: list[float] = []
            mem = node.base_mem + incoming.get(name, 0)
            for g in guests:
                c, gm = g.demand.at(t)
                c = c if c < g.vcpus else float(g.vcpus)
                gm = gm if gm < g.maxmem else float(g.maxmem)
                g.live_demand = c
                g.live_mem = int(gm)
                demands.append(c)
                mem += _memhost(g)
            total = sum(demands)
            cap = float(node.cores)
            if total <= cap:
                for g, c in zip(guests, demands, strict=True):
                    g.live_cpu = c
                delivered = total
            else:
                # max-min fair share (water filling)
                order = sorted(range(len(guests)), key=demands.__getitem__)
                remaining = cap
                left = len(order)
                for i in order:
                    share = remaining / left
                    got = demands[i] if demands[i] < share else share
                    guests[i].live_cpu = got
                    remaining -= got
                    left -= 1
                delivered = cap
            for g in guests:
                g.acc_cpu += g.live_cpu * dt
                g.acc_time += dt
            node.live_demand = total
            node.live_cpu = delivered
            node.live_mem = mem
            node.acc_cpu += delivered * dt
            node.acc_time += dt
            starved = (total - delivered) * dt
            over = max(0, mem - node.memory)
            cpu_frac = delivered / cap
            mem_frac = mem / node.memory
            self.metrics.record_node(
                t, dt, name, cpu_frac, mem_frac, starved, float(over), delivered, True
            )
            samples[name] = (cpu_frac, mem_frac)
        self.metrics.sample(t, samples)
        self.metrics.now = t + dt

    def _prefill_rrd(self, minutes: int = 70) -> None:
        """History before the run starts, so a client seeding from
        `rrddata?timeframe=hour` finds the last hour as on a running cluster.
        Demand models are functions of time, so the past is well defined;
        contention is applied per node as in the live physics."""
        for k in range(minutes, 0, -1):
            t = self.now - 60 * k + 30
            for node in self.nodes.values():
                if not node.powered:
                    continue
                gs = [g for g in self.guests_on(node.name) if g.running]
                dem = [min(g.demand.at(t)[0], float(g.vcpus)) for g in gs]
                total = sum(dem)
                scale = 1.0 if total <= node.cores else node.cores / total
                mem = float(node.base_mem)
                for g, c in zip(gs, dem, strict=True):
                    gmem = min(g.demand.at(t)[1], float(g.maxmem))
                    host = gmem + (0 if g.type == "lxc" else 24 * MIB + g.maxmem // 128)
                    mem += host
                    g.rrd.add(t, [c * scale / g.vcpus, gmem, host])
                node.rrd.add(t, [min(total, node.cores) / node.cores, mem, total])

    def _publish_node(self, node: Node, t: float) -> None:
        """A pvestatd round on `node`: what the API will show until the next."""
        if node.acc_time > 0:
            node.pub_cpu = min(1.0, node.acc_cpu / node.acc_time / node.cores)
        else:
            node.pub_cpu = node.live_cpu / node.cores
        if node.live_mem == 0:
            node.live_mem = node.base_mem + sum(
                _memhost(g) for g in self.guests_on(node.name) if g.running
            )
        node.pub_mem = node.live_mem
        # loadavg ≈ runnable threads: delivered plus waiting demand
        node.pub_loadavg = node.pub_loadavg * 0.85 + node.live_demand * 0.15
        node.pub_time = t
        node.acc_cpu = node.acc_time = 0.0
        node.rrd.add(t, [node.pub_cpu, float(node.pub_mem), node.pub_loadavg])
        for g in self.guests_on(node.name):
            if g.running:
                g.pub_cpu = (g.acc_cpu / g.acc_time / g.vcpus) if g.acc_time > 0 else 0.0
                g.pub_mem = g.live_mem
                g.pub_memhost = _memhost(g)
            else:
                g.pub_cpu = 0.0
                g.pub_mem = g.pub_memhost = 0
            g.acc_cpu = g.acc_time = 0.0
            g.pub_time = t
            g.rrd.add(t, [g.pub_cpu, float(g.pub_mem), float(g.pub_memhost)])
        if int(t) % 3600 < self.params.stat_interval:
            keep = t - self.params.rrd_keep
            node.rrd.prune(keep)
            for g in self.guests_on(node.name):
                g.rrd.prune(keep)

    # ------------------------------------------------------------------ tasks
    def _new_pid(self) -> int:
        return self._pid_rng.randint(1000, 4_000_000)

    def new_task(self, node: str, ttype: str, tid: str, user: str) -> Task:
        n = self.nodes[node]
        start = int(self.now)
        pid = self._new_pid()
        pstart = int((self.now - n.boot_time) * HZ) & 0xFFFFFFFF
        upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{start:08X}:{ttype}:{tid}:{user}:"
        while upid in self._task_index:  # same second, same pid: PVE cannot collide either
            pid += 1
            upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{start:08X}:{ttype}:{tid}:{user}:"
        task = Task(upid, node, ttype, tid, user, pid, pstart, start)
        self.tasks.append(task)
        self._task_index[upid] = task
        if len(self.tasks) > self.params.task_history * 2:
            keep_from = len(self.tasks) - self.params.task_history
            old = [x for x in self.tasks[:keep_from] if not x.running]
            for x in old:
                self._task_index.pop(x.upid, None)
            olds = {id(x) for x in old}
            self.tasks = [x for x in self.tasks if id(x) not in olds]
        return task

    def end_task(self, task: Task, status: str) -> None:
        if task.running:
            task.endtime = max(int(self.now), task.starttime)
            task.exitstatus = status
            if status == "OK":
                task.log.append("TASK OK")
            else:
                task.log.append(f"TASK ERROR: {status}")

    # ------------------------------------------------------------------ migrations
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
                task = self.new_task(g.node, "hamigrate", str(vmid), user)
                task.log.append(f"Requesting HA migration for VM {vmid} to node {target}")
                self.end_task(task, "OK")
                at = self.now + self.params.ha_delay
                self.pending_ha.append(PendingHaMigration(vmid, target, at, "request"))
                # PVE 9 moves positive resource-affinity partners along
                for sid in self.dependent_ha(g):
                    task.log.append(f"Requesting HA migration for dependent resource {sid}")
                    self.pending_ha.append(
                        PendingHaMigration(int(sid.split(":")[1]), target, at, "request")
                    )
                return task.upid
            return self._start_migration(g, target, user, with_local_disks).upid

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
        src = g.node
        if target == src:
            raise SimError(
                "Parameter verification failed.", 400, {"target": "target is local node."}
            )
        if not self.quorate(src):
            raise SimError("cluster not ready - no quorum?")
        if target not in self.nodes:
            raise SimError(f"no such cluster node '{target}'")
        if not self.nodes[target].reachable:
            raise SimError(f"target node '{target}' is not online")
        if g.lock:
            raise SimError(f"VM is locked ({g.lock})")
        if g.running:
            if g.type == "lxc":
                if online:
                    raise SimError("lxc live migration is currently not implemented")
                if not restart:
                    raise SimError("Can't migrate running container without --online or --restart")
            elif not online:
                raise SimError("can't migrate running VM without --online")
            if g.type == "qemu" and g.local_resources:
                raise SimError(
                    "can't migrate VM which uses local devices: " + ", ".join(g.local_resources)
                )
            if g.type == "qemu" and g.local_disks and not with_local_disks:
                vol = g.local_disks[0]["volid"]
                raise SimError(
                    f"can't migrate local disk '{vol}': can't live migrate attached local disks "
                    "without with-local-disks option"
                )
        # HA rules only bind HA-managed guests (PVE checks them in the HA stack)
        for rule in self.rules if g.ha else []:
            if rule.disable or g.sid not in rule.resources:
                continue
            if rule.type == "node-affinity" and rule.strict and target not in rule.node_names():
                raise SimError(
                    f"service '{g.sid}' is not allowed on node '{target}' (node-affinity rule "
                    f"'{rule.rule}')"
                )
            if rule.type == "resource-affinity" and rule.affinity == "negative":
                for sid in rule.resources:
                    other = self.guests.get(int(sid.split(":")[1]))
                    if other is not None and other.ha and sid != g.sid and other.node == target:
                        raise SimError(
                            f"service '{g.sid}' cannot be migrated to node '{target}': "
                            f"resource-affinity rule '{rule.rule}' with '{sid}'"
                        )

    def blocking_ha(self, g: Guest, target: str) -> list[dict[str, str]]:
        """HA resources on `target` that a negative resource-affinity rule
        keeps apart from `g` (both must be HA-managed, as in PVE)."""
        out: list[dict[str, str]] = []
        if not g.ha:
            return out
        for rule in self.rules:
            if (
                rule.disable
                or rule.type != "resource-affinity"
                or rule.affinity != "negative"
                or g.sid not in rule.resources
            ):
                continue
            for sid in rule.resources:
                other = self.guests.get(int(sid.split(":")[1]))
                if sid != g.sid and other is not None and other.ha and other.node == target:
                    out.append({"sid": sid, "cause": "resource-affinity"})
        return out

    def _start_migration(
        self, g: Guest, target: str, user: str, with_local_disks: bool = False
    ) -> Task:
        ttype = "qmigrate" if g.type == "qemu" else "vzmigrate"
        task = self.new_task(g.node, ttype, str(g.vmid), user)
        p = self.params
        bw = p.migration_bandwidth
        disks = sum(int(str(d.get("size", 0))) for d in g.local_disks) if with_local_disks else 0
        if g.running and g.type == "qemu":
            mem = _memhost(g)
            dirty = g.live_cpu * p.dirty_rate_per_core
            eff = max(bw - dirty, 0.1 * bw)
            copy = mem / eff
            wire = int(mem + dirty * copy) + disks
            duration = p.migration_setup + copy + disks / bw + 0.3
            held = mem
        elif g.running:  # lxc restart mode: stop, move, start
            duration = p.migration_setup + 10.0 + disks / bw
            wire = disks
            held = 0
        else:
            duration = p.migration_setup + disks / bw
            wire = disks
            held = 0
        mig = Migration(
            g.vmid,
            g.node,
            target,
            self.now,
            self.now + duration,
            held,
            wire,
            task,
            online=g.running,
        )
        roll = self._rng.random()
        frac = self._rng.uniform(0.2, 0.9)
        forced = self._force_fail.pop(g.vmid, None)
        if forced is not None or roll < self.failure_rate:
            mig.fail_at = self.now + duration * frac
            mig.fail_reason = forced or "migration problems"
        task.log.append(
            f"starting migration of VM {g.vmid} to node '{target}' ({self.nodes[target].ip})"
        )
        g.lock = "migrate"
        self.migrations[g.vmid] = mig
        return task

    def fail_next_migration(self, vmid: int, reason: str = "migration problems") -> None:
        """Test/fault hook: the next migration of `vmid` fails midway."""
        with self.lock:
            self._force_fail[vmid] = reason

    def _finish_migration(self, vmid: int, ok: bool, reason: str = "") -> None:
        m = self.migrations.pop(vmid)
        g = self.guests[vmid]
        if ok:
            g.node = m.target
            self._by_node = None
            g.lock = None
            if m.online and g.type == "lxc":
                g.start_time = self.now
            m.task.log.append(
                f"migration finished successfully (duration {_hms(self.now - m.start)})"
            )
            self.end_task(m.task, "OK")
            self.config_version += 1
        else:
            if g.lock == "migrate":
                g.lock = None
            m.task.log.append(f"ERROR: {reason}")
            self.end_task(m.task, reason or "migration aborted")
        self.metrics.migration_done(
            MigrationRecord(
                vmid,
                m.source,
                m.target,
                m.start,
                self.now,
                m.bytes_total
                if ok
                else int(
                    m.bytes_total * min(1.0, (self.now - m.start) / max(m.end - m.start, 1e-9))
                ),
                ok,
                m.task.type,
                m.task.user,
                "" if ok else reason,
            )
        )

    # ------------------------------------------------------------------ HA
    def _run_pending_ha(self, t: float) -> None:
        still: list[PendingHaMigration] = []
        for p in self.pending_ha:
            if p.at > t + 1e-9:
                still.append(p)
                continue
            g = self.guests.get(p.vmid)
            if g is None or not g.ha or g.node == p.target:
                continue
            if g.lock == "migrate" or g.vmid in self.migrations:
                continue
            active = sum(1 for m in self.migrations.values() if m.source == g.node)
            if active >= MAX_HA_WORKERS:
                p.at = t + 5.0
                still.append(p)
                continue
            tgt = self.nodes.get(p.target)
            if (
                tgt is None
                or not tgt.reachable
                or (tgt.maintenance and p.reason != "maintenance")
                or not self.quorate(g.node)
            ):
                continue  # the CRM drops a request it cannot fulfil
            if g.lock:
                p.at = t + 10.0  # LRM waits for the lock (e.g. backup)
                still.append(p)
                continue
            if g.running:
                self._start_migration(g, p.target, ROOT)
            else:  # stopped HA guest: relocate the config
                g.node = p.target
                self._by_node = None
        self.pending_ha = still

    def _crs(self) -> dict[str, Any]:
        crs = self.options.get("crs")
        return crs if isinstance(crs, dict) else {}

    def _ha_rounds_needed(self) -> bool:
        return self._auto_rebalance_on() or any(
            not r.disable and r.type == "node-affinity" for r in self.rules
        )

    def _auto_rebalance_on(self) -> bool:
        return str(self._crs().get("ha-auto-rebalance", 0)) in ("1", "True", "true")

    def _node_loads(self, shift: tuple[Guest, str, str] | None = None) -> dict[str, float]:
        """CRS view of node load: mean of published CPU and memory fraction;
        `shift` = (guest, from, to) estimates a move."""
        loads: dict[str, float] = {}
        for n in self.nodes.values():
            if not n.reachable or n.maintenance:
                continue
            cpu = n.pub_cpu * n.cores
            mem = float(n.pub_mem)
            if shift is not None:
                g, src, dst = shift
                gc = g.pub_cpu * g.vcpus
                if n.name == src:
                    cpu, mem = cpu - gc, mem - g.pub_memhost
                elif n.name == dst:
                    cpu, mem = cpu + gc, mem + g.pub_memhost
            loads[n.name] = (cpu / n.cores + mem / n.memory) / 2
        return loads

    @staticmethod
    def _imbalance(loads: dict[str, float]) -> float:
        vals = list(loads.values())
        if len(vals) < 2:
            return 0.0
        mean = sum(vals) / len(vals)
        if mean <= 0:
            return 0.0
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        return float(var**0.5 / mean)

    def _crs_rebalance(self) -> None:
        """A simple model of PVE 9.1's `ha-auto-rebalance`: when the node
        imbalance (coefficient of variation of the CRS load) stays above
        the threshold for `hold-duration` rounds, move the one HA guest whose
        move lowers it most, if it improves by at least `margin` (relative)."""
        crs = self._crs()
        threshold = float(crs.get("ha-auto-rebalance-threshold", 0.3))
        hold = float(crs.get("ha-auto-rebalance-hold-duration", 3))
        margin = float(crs.get("ha-auto-rebalance-margin", 0.1))
        loads = self._node_loads()
        now_imb = self._imbalance(loads)
        if now_imb <= threshold:
            self._imbalance_rounds = 0
            return
        self._imbalance_rounds += 1
        busy = any(self.guests[v].ha for v in self.migrations) or any(
            p.reason == "rebalance" for p in self.pending_ha
        )
        if self._imbalance_rounds < hold or busy:
            return
        best: tuple[float, int, str] | None = None
        for g in sorted(self.guests.values(), key=lambda x: x.vmid):
            if not g.ha or not g.running or g.lock or g.node not in loads:
                continue
            for dst in loads:
                if dst == g.node or self.blocking_ha(g, dst):
                    continue
                if any(
                    not r.disable
                    and r.type == "node-affinity"
                    and r.strict
                    and g.sid in r.resources
                    and dst not in r.node_names()
                    for r in self.rules
                ):
                    continue
                imb = self._imbalance(self._node_loads((g, g.node, dst)))
                if best is None or imb < best[0]:
                    best = (imb, g.vmid, dst)
        if best is not None and (now_imb - best[0]) / now_imb >= margin:
            self.pending_ha.append(
                PendingHaMigration(best[1], best[2], self.now + self.params.ha_delay, "rebalance")
            )
            self._imbalance_rounds = 0

    def ha_state(self, g: Guest) -> str:
        if not g.ha:
            return ""
        if g.vmid in self._recover_at:
            return "fence"
        if g.vmid in self.migrations:
            return "migrate"
        if any(p.vmid == g.vmid for p in self.pending_ha):
            return "migrate"
        if g.ha_state == "stopped":
            return "stopped"
        return "started" if g.running else "stopped"

    def node_ha_status(self, name: str) -> str:
        n = self.nodes[name]
        if not n.reachable:
            return "unknown"
        if n.maintenance:
            return "maintenance"
        return "online"

    def dependent_ha(self, g: Guest) -> list[str]:
        """HA resources bound to `g` by an enabled positive resource-affinity rule."""
        return sorted(
            {
                sid
                for r in self.rules
                if not r.disable
                and r.type == "resource-affinity"
                and r.affinity == "positive"
                and g.sid in r.resources
                for sid in r.resources
                if sid != g.sid and int(sid.split(":")[1]) in self.guests
            }
        )

    def _node_affinity(self, g: Guest) -> HaRule | None:
        for r in self.rules:
            if not r.disable and r.type == "node-affinity" and g.sid in r.resources:
                return r
        return None

    def _ha_candidates(
        self, g: Guest, exclude: set[str], ignore_blocking: bool = False
    ) -> list[Node]:
        """Nodes the HA stack may put `g` on: online, quorate, not in
        maintenance, not blocked by a negative resource-affinity rule, and
        within the highest available priority group of its node-affinity
        rule (any node if none of the rule's nodes is available and the rule
        is not strict)."""
        allowed = [
            n
            for n in self.nodes.values()
            if n.reachable
            and not n.maintenance
            and n.name not in exclude
            and self.quorate(n.name)
            and (ignore_blocking or not self.blocking_ha(g, n.name))
        ]
        rule = self._node_affinity(g)
        if rule is not None:
            prio = {}
            for entry in rule.nodes:
                name, _, p = entry.partition(":")
                prio[name] = int(p) if p.isdigit() else 0
            inrule = [n for n in allowed if n.name in prio]
            if inrule:
                top = max(prio[n.name] for n in inrule)
                allowed = [n for n in inrule if prio[n.name] == top]
            elif rule.strict:
                allowed = []
        return allowed

    def _ha_target(self, g: Guest, exclude: set[str]) -> str | None:
        """Where the HA stack would put `g`: among `_ha_candidates`, the node
        with the lowest memory use (CRS static)."""
        allowed = self._ha_candidates(g, exclude)
        if not allowed:
            return None
        return min(allowed, key=lambda n: (n.live_mem / n.memory, n.name)).name

    def _failback(self) -> None:
        """PVE's CRM (failback=1) moves an HA guest that runs outside the
        highest-priority available nodes of its node-affinity rule back."""
        for g in sorted(self.guests.values(), key=lambda x: x.vmid):
            if not g.ha or not g.running or g.lock or self._node_affinity(g) is None:
                continue
            if any(p.vmid == g.vmid for p in self.pending_ha):
                continue
            preferred = self._ha_candidates(g, set(), ignore_blocking=True)
            if not preferred or any(n.name == g.node for n in preferred):
                continue
            target = self._ha_target(g, set())
            if target is None or target not in {n.name for n in preferred}:
                continue  # the preferred nodes are blocked: stay put
            self.pending_ha.append(
                PendingHaMigration(g.vmid, target, self.now + self.params.ha_delay, "failback")
            )

    def _self_fence(self, name: str) -> None:
        """An isolated node with active HA services is reset by its watchdog."""
        node = self.nodes[name]
        if node.network or not node.powered:
            return
        for g in self.guests_on(name):
            if g.running:
                g.status = "stopped"
        for m in list(self.migrations.values()):
            if name in (m.source, m.target):
                self._finish_migration(m.vmid, ok=False, reason="migration aborted")
        node.boot_time = self.now

    def _recover(self, vmid: int) -> None:
        g = self.guests[vmid]
        home = self.nodes[g.node]
        if home.reachable and not home.maintenance:
            if not g.running:
                self._start_guest(g, g.node)
            return
        target = self._ha_target(g, {g.node})
        if target is None:
            self._recover_at[vmid] = self.now + 30.0
            return
        g.node = target
        self._by_node = None
        g.lock = None
        self._start_guest(g, target)

    def _start_guest(self, g: Guest, node: str) -> None:
        task = self.new_task(node, "qmstart" if g.type == "qemu" else "vzstart", str(g.vmid), ROOT)
        g.status = "running"
        g.start_time = self.now
        g.pid = self._new_pid()
        g.acc_cpu = g.acc_time = 0.0
        self.end_task(task, "OK")

    # ------------------------------------------------------------------ controls
    def power_off(self, name: str) -> None:
        """Hard power loss of a node."""
        with self.lock:
            node = self.nodes[name]
            if not node.powered:
                return
            node.powered = False
            for m in list(self.migrations.values()):
                if name in (m.source, m.target):
                    self._finish_migration(m.vmid, ok=False, reason="migration aborted")
            for t in self.tasks:
                if t.running and t.node == name:
                    self.end_task(t, "unexpected status")
            self._backup_runs = [r for r in self._backup_runs if r.node != name]
            for g in self.guests_on(name):
                was = g.running
                g.status = "stopped"
                g.live_cpu = g.live_demand = 0.0
                g.live_mem = 0
                if g.lock == "backup":
                    g.lock = None
                if g.ha and was:
                    self._recover_at[g.vmid] = self.now + self.params.fence_delay
            self.pending_ha = [p for p in self.pending_ha if p.target != name]
            self._elect_master()
            self.config_version += 1

    def power_on(self, name: str) -> None:
        with self.lock:
            node = self.nodes[name]
            if node.powered:
                return
            node.powered = True
            node.boot_time = self.now
            node.next_publish = self.now + node.stat_phase + 1.0
            node.pub_loadavg = 0.0
            for g in self.guests_on(name):
                if g.ha and g.ha_state == "started" and node.network:
                    self._recover_at.pop(g.vmid, None)
                    self._start_guest(g, name)
            self._elect_master()
            self.config_version += 1

    def cut_network(self, name: str) -> None:
        """The node loses its cluster network: no quorum, unreachable from
        the others; its guests keep running until the HA watchdog fences it."""
        with self.lock:
            node = self.nodes[name]
            if not node.network:
                return
            node.network = False
            for m in list(self.migrations.values()):
                if name in (m.source, m.target):
                    self._finish_migration(m.vmid, ok=False, reason="migration aborted")
            self.pending_ha = [p for p in self.pending_ha if p.target != name]
            has_ha = any(g.ha and g.running for g in self.guests_on(name))
            if has_ha and node.powered:
                self._self_fence_at[name] = self.now + self.params.self_fence_delay
                for g in self.guests_on(name):
                    if g.ha and g.running:
                        self._recover_at[g.vmid] = self.now + self.params.fence_delay
            self._elect_master()

    def restore_network(self, name: str) -> None:
        with self.lock:
            node = self.nodes[name]
            if node.network:
                return
            node.network = True
            self._self_fence_at.pop(name, None)
            for g in self.guests_on(name):
                if g.vmid in self._recover_at and g.running:
                    del self._recover_at[g.vmid]
            self._elect_master()

    def set_maintenance(self, name: str, on: bool) -> None:
        """`ha-manager crm-command node-maintenance enable|disable NODE`."""
        with self.lock:
            node = self.nodes[name]
            if node.maintenance == on:
                return
            node.maintenance = on
            delay = self.params.ha_delay
            if on:
                for g in sorted(self.guests_on(name), key=lambda x: x.vmid):
                    if not g.ha:
                        continue
                    target = self._ha_target(g, {name})
                    if target is not None:
                        self._ha_home[g.vmid] = name
                        self.pending_ha.append(
                            PendingHaMigration(g.vmid, target, self.now + delay, "maintenance")
                        )
            else:
                for vmid, home in list(self._ha_home.items()):
                    if home != name:
                        continue
                    del self._ha_home[vmid]
                    g = self.guests[vmid]
                    if g.node != name and g.ha:
                        self.pending_ha.append(
                            PendingHaMigration(vmid, name, self.now + delay, "maintenance")
                        )

    def set_demand(self, vmid: int, cpu: float | None = None, mem: float | None = None) -> None:
        """Change a guest's demand from now on (replaces trace replay)."""
        with self.lock:
            g = self.guests[vmid]
            cur_c, cur_m = g.demand.at(self.now)
            if isinstance(g.demand, StepDemand):
                g.demand.add_step(self.now, cpu, mem)
            else:
                g.demand = StepDemand(cur_c if cpu is None else cpu, cur_m if mem is None else mem)

    def set_failure_rate(self, rate: float) -> None:
        with self.lock:
            self.failure_rate = rate

    def _elect_master(self) -> None:
        cur = self.nodes.get(self.ha_master)
        if cur is None or not cur.reachable or not self.quorate(cur.name):
            for n in self.nodes.values():
                if n.reachable and self.quorate(n.name):
                    self.ha_master = n.name
                    return

    # ------------------------------------------------------------------ backups
    def start_backup(self, job_id: str | None = None, node: str | None = None) -> list[str]:
        """Run a backup job now (or an ad-hoc vzdump of every guest on
        `node`); returns the vzdump UPIDs, one per node."""
        with self.lock:
            job = None
            if job_id is not None:
                job = next((j for j in self.backup_jobs if j.id == job_id), None)
                if job is None:
                    raise SimError(f"backup job '{job_id}' does not exist", 404)
            upids = []
            for n in self.nodes.values():
                if not n.reachable:
                    continue
                if (node and n.name != node) or (job and job.node and n.name != job.node):
                    continue
                vmids = sorted(
                    g.vmid
                    for g in self.guests_on(n.name)
                    if not g.template and (job is None or job.vmids is None or g.vmid in job.vmids)
                )
                if not vmids:
                    continue
                task = self.new_task(n.name, "vzdump", "", ROOT)
                task.log.append(
                    f"INFO: starting new backup job: vzdump {' '.join(map(str, vmids))}"
                )
                per = job.seconds_per_guest if job else 60.0
                run = _BackupRun(job.id if job else "", n.name, task, vmids, None, self.now, per)
                self._backup_runs.append(run)
                self._backup_step(run)
                upids.append(task.upid)
            return upids

    def _backup_step(self, run: _BackupRun) -> None:
        per = run.per
        if run.current is not None:
            g = self.guests.get(run.current)
            if g is not None and g.lock == "backup":
                g.lock = None
            run.task.log.append(f"INFO: Finished Backup of VM {run.current}")
            run.current = None
        while run.queue:
            vmid = run.queue.pop(0)
            g = self.guests.get(vmid)
            if g is None or g.node != run.node:
                continue
            if g.lock:
                run.errors.append(vmid_err := f"VM {vmid} - VM is locked ({g.lock})")
                run.task.log.append(f"ERROR: Backup of VM {vmid} failed - {vmid_err}")
                continue
            g.lock = "backup"
            run.current = vmid
            run.current_end = self.now + per
            run.task.log.append(f"INFO: Starting Backup of VM {vmid} (qemu)")
            return
        self._backup_runs.remove(run)
        self.end_task(run.task, "job errors" if run.errors else "OK")

    def backup_next_run(self, job_id: str) -> float:
        return self._backup_next[job_id]

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
                task = self.new_task(node, "qmigrate", str(a["vmid"]), str(a.get("user", ROOT)))
                self.end_task(task, exc.message)

    def log_request(self, rec: RequestRecord, template: str) -> None:
        self.request_log.append(rec)
        self.metrics.api_request(rec.method, template, rec.status)


def _memhost(g: Guest) -> int:
    """Host-side memory of a running guest: what it touched plus the QEMU
    process overhead (LXC has none)."""
    if g.type == "lxc":
        return g.live_mem
    return g.live_mem + 24 * MIB + g.maxmem // 128


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
