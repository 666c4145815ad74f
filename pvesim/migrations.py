"""Live and offline migrations: PVE's refusals, how long a copy takes, and
how it ends.

A running QEMU guest copies its host memory at the migration bandwidth less
what its busy cores dirty meanwhile (never below a tenth of it), plus local
disks when asked; the target holds that memory while copying. A container
in restart mode is stopped, moved and started. A migration fails midway at
the scenario's failure rate, or when a test asks for it; the draw comes from
its own random sequence, so the rest of the run does not depend on how many
migrations there were. The HA rules PVE also checks live in `pvesim.ha`.
"""

from __future__ import annotations

import random

from pvesim.metrics import MigrationRecord
from pvesim.physics import memhost
from pvesim.protocol import SimError
from pvesim.state import Guest, Migration, Task
from pvesim.tasks import Tasks
from pvesim.world import World


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Migrations:
    def __init__(self, world: World, tasks: Tasks) -> None:
        self.w = world
        self.tasks = tasks
        self.running: dict[int, Migration] = {}  # vmid → the migration under way
        self.failure_rate = world.params.migration_failure_rate
        self._rng = random.Random(f"pvesim-{world.seed}-migrations")
        self._force_fail: dict[int, str] = {}

    def check(
        self,
        g: Guest,
        target: str,
        online: bool | None,
        with_local_disks: bool = False,
        restart: bool = False,
    ) -> None:
        """PVE's refusals before the HA rules, in the order PVE checks them
        (target is local → quorum → target exists → lock → running without
        online → local devices/disks)."""
        w = self.w
        src = g.node
        if target == src:
            raise SimError(
                "Parameter verification failed.", 400, {"target": "target is local node."}
            )
        if not w.quorate(src):
            raise SimError("cluster not ready - no quorum?")
        if target not in w.nodes:
            raise SimError(f"no such cluster node '{target}'")
        if not w.nodes[target].reachable:
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

    def start(self, g: Guest, target: str, user: str, with_local_disks: bool = False) -> Task:
        w = self.w
        ttype = "qmigrate" if g.type == "qemu" else "vzmigrate"
        task = self.tasks.new(g.node, ttype, str(g.vmid), user)
        p = w.params
        bw = p.migration_bandwidth
        disks = sum(int(str(d.get("size", 0))) for d in g.local_disks) if with_local_disks else 0
        if g.running and g.type == "qemu":
            mem = memhost(g)
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
            w.now,
            w.now + duration,
            held,
            wire,
            task,
            online=g.running,
        )
        roll = self._rng.random()
        frac = self._rng.uniform(0.2, 0.9)
        forced = self._force_fail.pop(g.vmid, None)
        if forced is not None or roll < self.failure_rate:
            mig.fail_at = w.now + duration * frac
            mig.fail_reason = forced or "migration problems"
        task.log.append(
            f"starting migration of VM {g.vmid} to node '{target}' ({w.nodes[target].ip})"
        )
        g.lock = "migrate"
        self.running[g.vmid] = mig
        return task

    def fail_next(self, vmid: int, reason: str) -> None:
        self._force_fail[vmid] = reason

    def finish(self, vmid: int, ok: bool, reason: str = "") -> None:
        w = self.w
        m = self.running.pop(vmid)
        g = w.guests[vmid]
        if ok:
            g.node = m.target
            w.placement_changed()
            g.lock = None
            if m.online and g.type == "lxc":
                g.start_time = w.now
            m.task.log.append(
                f"migration finished successfully (duration {_hms(w.now - m.start)})"
            )
            self.tasks.end(m.task, "OK")
            w.config_version += 1
        else:
            if g.lock == "migrate":
                g.lock = None
            m.task.log.append(f"ERROR: {reason}")
            self.tasks.end(m.task, reason or "migration aborted")
        w.metrics.migration_done(
            MigrationRecord(
                vmid,
                m.source,
                m.target,
                m.start,
                w.now,
                m.bytes_total
                if ok
                else int(
                    m.bytes_total * min(1.0, (w.now - m.start) / max(m.end - m.start, 1e-9))
                ),
                ok,
                m.task.type,
                m.task.user,
                "" if ok else reason,
            )
        )

    def abort_touching(self, node: str) -> None:
        """`node` went away: every migration from or to it fails."""
        for m in list(self.running.values()):
            if node in (m.source, m.target):
                self.finish(m.vmid, ok=False, reason="migration aborted")

    def incoming(self) -> dict[str, int]:
        """Memory being copied onto each target node."""
        out: dict[str, int] = {}
        for m in self.running.values():
            out[m.target] = out.get(m.target, 0) + m.mem_bytes
        return out

    def wakes(self) -> list[float]:
        return [m.end if m.fail_at is None else m.fail_at for m in self.running.values()]

    def due(self, t: float) -> None:
        """End the migrations that complete or fail by `t`."""
        eps = 1e-9
        for vmid, m in list(self.running.items()):
            if m.fail_at is not None and m.fail_at <= t + eps:
                self.finish(vmid, ok=False, reason=m.fail_reason)
            elif m.end <= t + eps:
                self.finish(vmid, ok=True)
