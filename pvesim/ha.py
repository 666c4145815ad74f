"""The HA stack: the CRM's decisions for HA-managed guests, and the CRS.

What it models of pve-ha-manager: a migration request for an HA guest is
answered with a `hamigrate` task and carried out `ha_delay` later by the
LRM (at most `MAX_HA_WORKERS` at once per source node, waiting for a lock
such as a backup's); node-affinity and resource-affinity rules bind where a
guest may go (failback to the preferred nodes every CRM round);
maintenance mode moves HA guests away and back; a node lost for
`fence_delay` has its HA guests recovered elsewhere, and a node cut off
from the cluster resets itself by watchdog after `self_fence_delay`. The
CRS places a guest on the allowed node with the lowest memory use (static
mode), and with `ha-auto-rebalance` on moves one guest per round when the
load imbalance stays above its threshold (a model of pve-ha-manager 5.2's,
compared with its source in docs/simulator.md).
"""

from __future__ import annotations

from typing import Any

from pvesim.migrations import Migrations
from pvesim.protocol import SimError
from pvesim.state import Guest, HaRule, Node, PendingHaMigration, Stall
from pvesim.tasks import ROOT, Tasks
from pvesim.world import World

MAX_HA_WORKERS = 4  # PVE's LRM max_workers default
HA_ROUND = 10.0  # CRM round


class HaManager:
    def __init__(self, world: World, tasks: Tasks, migrations: Migrations) -> None:
        self.w = world
        self.tasks = tasks
        self.migrations = migrations
        self.rules: list[HaRule] = []
        self.pending: list[PendingHaMigration] = []
        self.master = ""
        self._recover_at: dict[int, float] = {}  # vmid → HA recovery time
        self._self_fence_at: dict[str, float] = {}
        self._home: dict[int, str] = {}  # guest moved away by maintenance → its home
        self._round = world.now + HA_ROUND
        self._imbalance_rounds = 0

    # ------------------------------------------------------------------ requests
    def request_migration(self, g: Guest, target: str, user: str) -> str:
        """`qm migrate` of an HA guest: a `hamigrate` task that ends at once,
        the real migration later (PVE 9 moves positive resource-affinity
        partners along); returns the hamigrate UPID."""
        vmid = g.vmid
        task = self.tasks.new(g.node, "hamigrate", str(vmid), user)
        task.log.append(f"Requesting HA migration for VM {vmid} to node {target}")
        self.tasks.end(task, "OK")
        at = self.w.now + self.w.params.ha_delay
        self.pending.append(PendingHaMigration(vmid, target, at, "request"))
        for sid in self.dependent(g):
            task.log.append(f"Requesting HA migration for dependent resource {sid}")
            self.pending.append(PendingHaMigration(int(sid.split(":")[1]), target, at, "request"))
        return task.upid

    def check_rules(self, g: Guest, target: str) -> None:
        """The HA rules' refusals of a migration to `target`; they bind only
        HA-managed guests (PVE checks them in the HA stack)."""
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
                    other = self.w.guests.get(int(sid.split(":")[1]))
                    if other is not None and other.ha and sid != g.sid and other.node == target:
                        raise SimError(
                            f"service '{g.sid}' cannot be migrated to node '{target}': "
                            f"resource-affinity rule '{rule.rule}' with '{sid}'"
                        )

    def blocking(self, g: Guest, target: str) -> list[dict[str, str]]:
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
                other = self.w.guests.get(int(sid.split(":")[1]))
                if sid != g.sid and other is not None and other.ha and other.node == target:
                    out.append({"sid": sid, "cause": "resource-affinity"})
        return out

    def dependent(self, g: Guest) -> list[str]:
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
                if sid != g.sid and int(sid.split(":")[1]) in self.w.guests
            }
        )

    # ------------------------------------------------------------------ status
    def state(self, g: Guest) -> str:
        if not g.ha:
            return ""
        if g.vmid in self._recover_at:
            return "fence"
        if g.vmid in self.migrations.running:
            return "migrate"
        if any(p.vmid == g.vmid for p in self.pending):
            return "migrate"
        if g.ha_state == "stopped":
            return "stopped"
        return "started" if g.running else "stopped"

    def node_status(self, name: str) -> str:
        n = self.w.nodes[name]
        if not n.reachable:
            return "unknown"
        if n.maintenance:
            return "maintenance"
        return "online"

    def elect_master(self) -> None:
        w = self.w
        cur = w.nodes.get(self.master)
        if cur is None or not cur.reachable or not w.quorate(cur.name):
            for n in w.nodes.values():
                if n.reachable and w.quorate(n.name):
                    self.master = n.name
                    return

    # ------------------------------------------------------------------ the clock
    def wakes(self) -> list[float]:
        out = [p.at for p in self.pending]
        out.extend(self._recover_at.values())
        out.extend(self._self_fence_at.values())
        if self._rounds_needed():
            out.append(self._round)
        return out

    def due(self, t: float) -> None:
        """Self-fencing, recoveries, the CRM round and the LRM's pending
        migrations due at `t`, in that order."""
        eps = 1e-9
        for node, at in list(self._self_fence_at.items()):
            if at <= t + eps:
                del self._self_fence_at[node]
                self._self_fence(node)
        for vmid, at in list(self._recover_at.items()):
            if at <= t + eps:
                del self._recover_at[vmid]
                self._recover(vmid)
        if self._round <= t + eps:
            self._round = t + HA_ROUND
            if self._rounds_needed():
                self._failback()
            if self._auto_rebalance_on():
                self._crs_rebalance()
        if self.pending:
            self._run_pending(t)

    def _run_pending(self, t: float) -> None:
        w = self.w
        running = self.migrations.running
        still: list[PendingHaMigration] = []
        for p in self.pending:
            if p.at > t + 1e-9:
                still.append(p)
                continue
            g = w.guests.get(p.vmid)
            if g is None or not g.ha or g.node == p.target:
                continue
            if g.lock == "migrate" or g.vmid in running:
                continue
            active = sum(1 for m in running.values() if m.source == g.node)
            if active >= MAX_HA_WORKERS:
                p.at = t + 5.0
                still.append(p)
                continue
            tgt = w.nodes.get(p.target)
            if (
                tgt is None
                or not tgt.reachable
                or (tgt.maintenance and p.reason != "maintenance")
                or not w.quorate(g.node)
            ):
                continue  # the CRM drops a request it cannot fulfil
            if g.lock:
                p.at = t + 10.0  # LRM waits for the lock (e.g. backup)
                still.append(p)
                continue
            if g.running:
                self.migrations.start(g, p.target, ROOT)
            else:  # stopped HA guest: relocate the config
                g.node = p.target
                w.placement_changed()
        self.pending = still

    # ------------------------------------------------------------------ placement
    def _node_affinity(self, g: Guest) -> HaRule | None:
        for r in self.rules:
            if not r.disable and r.type == "node-affinity" and g.sid in r.resources:
                return r
        return None

    def _candidates(self, g: Guest, exclude: set[str], ignore_blocking: bool = False) -> list[Node]:
        """Nodes the HA stack may put `g` on: online, quorate, not in
        maintenance, not blocked by a negative resource-affinity rule, and
        within the highest available priority group of its node-affinity
        rule (any node if none of the rule's nodes is available and the rule
        is not strict)."""
        w = self.w
        allowed = [
            n
            for n in w.nodes.values()
            if n.reachable
            and not n.maintenance
            and n.name not in exclude
            and w.quorate(n.name)
            and (ignore_blocking or not self.blocking(g, n.name))
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

    def _target(self, g: Guest, exclude: set[str]) -> str | None:
        """Where the HA stack would put `g`: among `_candidates`, the node
        with the lowest memory use (CRS static)."""
        allowed = self._candidates(g, exclude)
        if not allowed:
            return None
        return min(allowed, key=lambda n: (n.live_mem / n.memory, n.name)).name

    def _failback(self) -> None:
        """PVE's CRM (failback=1) moves an HA guest that runs outside the
        highest-priority available nodes of its node-affinity rule back."""
        w = self.w
        for g in sorted(w.guests.values(), key=lambda x: x.vmid):
            if not g.ha or not g.running or g.lock or self._node_affinity(g) is None:
                continue
            if any(p.vmid == g.vmid for p in self.pending):
                continue
            preferred = self._candidates(g, set(), ignore_blocking=True)
            if not preferred or any(n.name == g.node for n in preferred):
                continue
            target = self._target(g, set())
            if target is None or target not in {n.name for n in preferred}:
                continue  # the preferred nodes are blocked: stay put
            self.pending.append(
                PendingHaMigration(g.vmid, target, w.now + w.params.ha_delay, "failback")
            )

    def set_maintenance(self, name: str, on: bool) -> None:
        """`ha-manager crm-command node-maintenance enable|disable NODE`."""
        w = self.w
        node = w.nodes[name]
        if node.maintenance == on:
            return
        node.maintenance = on
        delay = w.params.ha_delay
        if on:
            for g in sorted(w.guests_on(name), key=lambda x: x.vmid):
                if not g.ha:
                    continue
                target = self._target(g, {name})
                if target is not None:
                    self._home[g.vmid] = name
                    self.pending.append(
                        PendingHaMigration(g.vmid, target, w.now + delay, "maintenance")
                    )
        else:
            for vmid, home in list(self._home.items()):
                if home != name:
                    continue
                del self._home[vmid]
                g = w.guests[vmid]
                if g.node != name and g.ha:
                    self.pending.append(
                        PendingHaMigration(vmid, name, w.now + delay, "maintenance")
                    )

    # ------------------------------------------------------------------ node loss
    def node_died(self, name: str, lost: list[int]) -> None:
        """`name` lost power with the HA guests `lost` running on it: they
        are recovered after `fence_delay`; requests towards it are dropped."""
        w = self.w
        for vmid in lost:
            self._recover_at[vmid] = w.now + w.params.fence_delay
        self.pending = [p for p in self.pending if p.target != name]
        self.elect_master()

    def node_powered_on(self, name: str) -> None:
        """The LRM of a node back from power loss starts its HA guests
        (unless they were recovered elsewhere meanwhile)."""
        w = self.w
        node = w.nodes[name]
        for g in w.guests_on(name):
            if g.ha and g.ha_state == "started" and node.network:
                self._recover_at.pop(g.vmid, None)
                self.start_guest(g, name)
        self.elect_master()

    def node_isolated(self, name: str) -> None:
        """`name` lost its cluster network: with HA guests running it fences
        itself after `self_fence_delay`, and they are recovered elsewhere."""
        w = self.w
        node = w.nodes[name]
        self.pending = [p for p in self.pending if p.target != name]
        has_ha = any(g.ha and g.running for g in w.guests_on(name))
        if has_ha and node.powered:
            self._self_fence_at[name] = w.now + w.params.self_fence_delay
            for g in w.guests_on(name):
                if g.ha and g.running:
                    self._recover_at[g.vmid] = w.now + w.params.fence_delay
        self.elect_master()

    def node_rejoined(self, name: str) -> None:
        """The network is back before the watchdog fired: nothing is fenced
        or recovered."""
        self._self_fence_at.pop(name, None)
        for g in self.w.guests_on(name):
            if g.vmid in self._recover_at and g.running:
                del self._recover_at[g.vmid]
        self.elect_master()

    def _self_fence(self, name: str) -> None:
        """An isolated node with active HA services is reset by its watchdog."""
        w = self.w
        node = w.nodes[name]
        if node.network or not node.powered:
            return
        for g in w.guests_on(name):
            if g.running:
                g.status = "stopped"
        self.migrations.abort_touching(name)
        node.boot_time = w.now

    def _recover(self, vmid: int) -> None:
        w = self.w
        g = w.guests[vmid]
        home = w.nodes[g.node]
        if home.reachable and not home.maintenance:
            if not g.running:
                self.start_guest(g, g.node)
            return
        target = self._target(g, {g.node})
        if target is None:
            self._recover_at[vmid] = w.now + 30.0
            return
        g.node = target
        w.placement_changed()
        g.lock = None
        self.start_guest(g, target)

    def start_guest(self, g: Guest, node: str) -> None:
        task = self.tasks.new(node, "qmstart" if g.type == "qemu" else "vzstart", str(g.vmid), ROOT)
        g.status = "running"
        g.start_time = self.w.now
        g.pid = self.w.new_pid()
        g.acc_cpu = g.acc_time = 0.0
        g.acc_stall = Stall()
        self.tasks.end(task, "OK")

    # ------------------------------------------------------------------ CRS
    def _crs(self) -> dict[str, Any]:
        crs = self.w.options.get("crs")
        return crs if isinstance(crs, dict) else {}

    def _rounds_needed(self) -> bool:
        return self._auto_rebalance_on() or any(
            not r.disable and r.type == "node-affinity" for r in self.rules
        )

    def _auto_rebalance_on(self) -> bool:
        return str(self._crs().get("ha-auto-rebalance", 0)) in ("1", "True", "true")

    def _guest_usage(self, g: Guest, static: bool) -> tuple[float, float]:
        """(cores, bytes) a guest puts on its node in the CRS view: its
        configured vCPUs and memory in `static` mode, its published use in
        `dynamic` mode (PVE's Usage::Static / Usage::Dynamic)."""
        if static:
            return float(g.vcpus), float(g.maxmem)
        return g.pub_cpu * g.vcpus, float(g.pub_memhost)

    def _node_used(self, static: bool) -> dict[str, tuple[float, float]]:
        """(cores, bytes) used per online node in the CRS view: in `static`
        mode the configured vCPUs and memory of the running guests (HA or
        not), in `dynamic` mode the node's published use."""
        used: dict[str, tuple[float, float]] = {}
        for n in self.w.nodes.values():
            if n.reachable and not n.maintenance:
                used[n.name] = (0.0, 0.0) if static else (n.pub_cpu * n.cores, float(n.pub_mem))
        if static:
            for g in self.w.guests.values():
                if g.running and g.node in used:
                    c, m = used[g.node]
                    used[g.node] = (c + g.vcpus, m + g.maxmem)
        return used

    def _node_fractions(
        self,
        used: dict[str, tuple[float, float]],
        static: bool,
        shift: tuple[Guest, str, str] | None = None,
    ) -> dict[str, tuple[float, float]]:
        """(CPU fraction, memory fraction) per node in the CRS view; `shift`
        = (guest, from, to) estimates a move with the guest's own usage."""
        nodes = self.w.nodes
        gc = gm = 0.0
        src = dst = ""
        if shift is not None:
            g, src, dst = shift
            gc, gm = self._guest_usage(g, static)
        out: dict[str, tuple[float, float]] = {}
        for name, (cpu0, mem0) in used.items():
            cpu, mem = cpu0, mem0
            if name == src:
                cpu, mem = max(0.0, cpu - gc), max(0.0, mem - gm)
            elif name == dst:
                cpu, mem = cpu + gc, mem + gm
            out[name] = (cpu / nodes[name].cores, mem / nodes[name].memory)
        return out

    def _node_loads(
        self,
        used: dict[str, tuple[float, float]],
        static: bool,
        shift: tuple[Guest, str, str] | None = None,
    ) -> dict[str, float]:
        """CRS view of node load, as PVE's resource scheduler computes it:
        the mean of the node's CPU fraction and memory fraction."""
        return {n: (c + m) / 2 for n, (c, m) in self._node_fractions(used, static, shift).items()}

    @staticmethod
    def _topsis_best(alternatives: list[list[float]]) -> int:
        """Index of the best alternative by TOPSIS with PVE's criteria, all to
        be minimised: RMS of node CPU fractions (weight 1), highest CPU
        fraction (2), RMS of memory fractions (5), highest memory fraction
        (10), each plus 1. Columns are scaled by their L2 norm, the weights
        by their sum; the score is the distance to the worst ideal over the
        sum of both distances; the first of equal scores wins."""
        weights = [w / 18 for w in (1.0, 2.0, 5.0, 10.0)]
        cols = list(zip(*alternatives, strict=True))
        norms = [sum(v * v for v in col) ** 0.5 for col in cols]
        matrix = [
            [v / nrm if nrm else v for v, nrm in zip(row, norms, strict=True)]
            for row in alternatives
        ]
        best = [min(col) for col in zip(*matrix, strict=True)]
        worst = [max(col) for col in zip(*matrix, strict=True)]

        def dist(row: list[float], ideal: list[float]) -> float:
            return (
                sum((w * (v - i)) ** 2 for v, i, w in zip(row, ideal, weights, strict=True)) ** 0.5
            )

        scores = []
        for row in matrix:
            d_best, d_worst = dist(row, best), dist(row, worst)
            scores.append(d_worst / (d_best + d_worst) if d_best + d_worst else 0.0)
        return max(range(len(scores)), key=lambda i: (scores[i], -i))

    @staticmethod
    def _topsis_row(fractions: dict[str, tuple[float, float]]) -> list[float]:
        cpu = [c for c, _ in fractions.values()]
        mem = [m for _, m in fractions.values()]
        n = len(cpu)
        return [
            1 + (sum(c * c for c in cpu) / n) ** 0.5,
            1 + max(cpu),
            1 + (sum(m * m for m in mem) / n) ** 0.5,
            1 + max(mem),
        ]

    @staticmethod
    def _imbalance(loads: dict[str, float]) -> float:
        """PVE's node imbalance: the coefficient of variation of the node
        loads divided by its upper bound sqrt(n - 1), so 0 is even and 1 is
        all load on one node (proxmox-resource-scheduling)."""
        vals = list(loads.values())
        if len(vals) < 2:
            return 0.0
        mean = sum(vals) / len(vals)
        if mean <= 0:
            return 0.0
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        return float(var**0.5 / mean / (len(vals) - 1) ** 0.5)

    def _crs_rebalance(self) -> None:
        """PVE's `ha-auto-rebalance`: when the node imbalance stays above
        the threshold for `hold-duration` rounds, move the one HA guest whose
        move lowers it most (`bruteforce`) or whose resulting cluster TOPSIS
        ranks first (`topsis`), if that lowers the imbalance by
        at least `margin` (relative). Only in `static` and `dynamic` mode;
        the differences from pve-ha-manager are listed in docs/simulator.md."""
        w = self.w
        crs = self._crs()
        # threshold and margin are percentages in PVE's `crs` schema
        threshold = float(crs.get("ha-auto-rebalance-threshold", 30)) / 100
        hold = float(crs.get("ha-auto-rebalance-hold-duration", 3))
        margin = float(crs.get("ha-auto-rebalance-margin", 10)) / 100
        mode = str(crs.get("ha", "basic"))
        static = mode == "static"
        used = self._node_used(static)
        loads = self._node_loads(used, static)
        # the basic scheduler reports no imbalance, so nothing is balanced
        now_imb = self._imbalance(loads) if mode in ("static", "dynamic") else 0.0
        if now_imb <= threshold:
            self._imbalance_rounds = 0
            return
        self._imbalance_rounds += 1
        busy = any(w.guests[v].ha for v in self.migrations.running) or any(
            p.reason == "rebalance" for p in self.pending
        )
        if self._imbalance_rounds < hold or busy:
            return
        candidates: list[tuple[Guest, str]] = []
        for g in sorted(w.guests.values(), key=lambda x: x.vmid):
            if not g.ha or not g.running or g.lock or g.node not in loads:
                continue
            for dst in loads:
                if dst == g.node or self.blocking(g, dst):
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
                candidates.append((g, dst))
        best: tuple[float, int, str] | None = None
        if candidates and str(crs.get("ha-auto-rebalance-method", "bruteforce")) == "topsis":
            rows = [
                self._topsis_row(self._node_fractions(used, static, (g, g.node, dst)))
                for g, dst in candidates
            ]
            g, dst = candidates[self._topsis_best(rows)]
            best = (self._imbalance(self._node_loads(used, static, (g, g.node, dst))), g.vmid, dst)
        else:
            for g, dst in candidates:
                imb = self._imbalance(self._node_loads(used, static, (g, g.node, dst)))
                if best is None or imb < best[0]:
                    best = (imb, g.vmid, dst)
        if best is not None and (now_imb - best[0]) / now_imb >= margin:
            self.pending.append(
                PendingHaMigration(best[1], best[2], w.now + w.params.ha_delay, "rebalance")
            )
            self._imbalance_rounds = 0
