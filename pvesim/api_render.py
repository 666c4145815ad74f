"""The shapes several read endpoints share: a guest or node as
`/cluster/resources` lists it, a task entry, RRD rows, the lookup of a guest
from `{node}/{vmid}`, and PVE's version strings.

Every number shown is what pvestatd last published, never the live physics,
so clients see PVE's lag. Booleans are rendered as 0/1 integers, as PVE's
Perl JSON encoder sends them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pvesim.routing import ApiError, Ctx
from pvesim.state import GIB, Guest, Node, Rrd

PVE_VERSION = "9.1.1"


PVE_RELEASE = "9.1"


PVE_REPOID = "42db4a6cf"


TIMEFRAMES = {
    "hour": 60,
    "day": 1800,
    "week": 10800,
    "month": 43200,
    "year": 604800,
    "decade": 6048000,
}


ROWS = 70


def digest(obj: Any) -> str:
    return hashlib.sha1(repr(obj).encode()).hexdigest()


def pve_bool(v: bool) -> int:
    return 1 if v else 0


def guest_or_500(ctx: Ctx, kind: str) -> Guest:
    node = ctx.params["node"]
    vmid = ctx.params["vmid"]
    g = ctx.sim.guests.get(vmid)
    if g is None or g.node != node or g.type != kind:
        d = "qemu-server" if kind == "qemu" else "lxc"
        raise ApiError(500, f"Configuration file 'nodes/{node}/{d}/{vmid}.conf' does not exist")
    return g


def io_counters(g: Guest) -> dict[str, int]:
    """Network and disk counters: rough figures that follow the guest's CPU
    (the balancer never reads them; they are here because PVE sends them)."""
    return {
        "netin": int(g.pub_cpu * 1e6),
        "netout": int(g.pub_cpu * 8e5),
        "diskread": 0,
        "diskwrite": 0,
    }


def guest_pressure(g: Guest, kind: str) -> dict[str, float]:
    """A guest's PSI as its status and list show it (percent, last round).
    PVE 9 lists no `pressurecpufull` for containers, so LXC gets none."""
    s = g.pub_stall
    d = {
        "pressurecpusome": round(s.cpu_some, 2),
        "pressurecpufull": round(s.cpu_full, 2),
        "pressureiosome": 0.0,
        "pressureiofull": 0.0,
        "pressurememorysome": round(s.mem_some, 2),
        "pressurememoryfull": round(s.mem_full, 2),
    }
    if kind == "lxc":
        del d["pressurecpufull"]
    return d


def uptime(ctx: Ctx, g: Guest) -> int:
    return int(ctx.sim.now - g.start_time) if g.running else 0


def node_resource(ctx: Ctx, n: Node) -> dict[str, Any]:
    if not ctx.sees(n.name):
        return {
            "id": f"node/{n.name}",
            "type": "node",
            "node": n.name,
            "status": "offline",
            "level": "",
        }
    return {
        "id": f"node/{n.name}",
        "type": "node",
        "node": n.name,
        "status": "online",
        "cpu": round(n.pub_cpu, 6),
        "maxcpu": n.cores,
        "mem": n.pub_mem,
        "maxmem": n.memory,
        "disk": 12 * GIB,
        "maxdisk": 100 * GIB,
        "uptime": int(ctx.sim.now - n.boot_time),
        "level": "",
        "cgroup-mode": 2,
    }


def guest_resource(ctx: Ctx, g: Guest) -> dict[str, Any]:
    sim = ctx.sim
    d: dict[str, Any] = {
        "id": f"{g.type}/{g.vmid}",
        "type": g.type,
        "vmid": g.vmid,
        "name": g.name,
        "node": g.node,
        "template": pve_bool(g.template),
        "maxcpu": g.vcpus,
        "maxmem": g.maxmem,
        "maxdisk": g.maxdisk,
        "disk": 0,
    }
    if not ctx.sees(g.node):
        d["status"] = "unknown"
    else:
        d.update(
            {
                "status": g.status,
                "cpu": round(g.pub_cpu, 6),
                "mem": g.pub_mem,
                "uptime": uptime(ctx, g),
                **io_counters(g),
            }
        )
        if g.type == "qemu":
            d["memhost"] = g.pub_memhost
    if g.tags:
        d["tags"] = ";".join(g.tags)
    if g.lock:
        d["lock"] = g.lock
    if g.ha:
        d["hastate"] = sim.ha_state(g)
    if g.pool:
        d["pool"] = g.pool
    return d


def task_entry(t: Any) -> dict[str, Any]:
    d = {
        "upid": t.upid,
        "node": t.node,
        "pid": t.pid,
        "pstart": t.pstart,
        "starttime": t.starttime,
        "type": t.type,
        "id": t.id,
        "user": t.user,
    }
    if not t.running:
        d["endtime"] = t.endtime
        d["status"] = t.exitstatus
    return d


def may_see_task(ctx: Ctx, t: Any) -> bool:
    return t.user in (ctx.token.token_id, ctx.token.user) or ctx.can(
        f"/nodes/{t.node}", "Sys.Audit"
    )


def rrd_rows(rrd: Rrd, now: float, timeframe: str, cf: str, emit: Any) -> list[dict[str, Any]]:
    step = TIMEFRAMES[timeframe]
    end = int(now // step) * step
    rows = []
    n = rrd.nfields
    for i in range(ROWS):
        t = end - step * (ROWS - 1 - i)
        count = 0.0
        sums = [0.0] * n
        maxs = [float("-inf")] * n
        for m in range(t, t + step, 60):
            b = rrd.minutes.get(m)
            if b is None:
                continue
            count += 1
            for k in range(n):
                sums[k] += b[1 + k] / b[0]
                maxs[k] = max(maxs[k], b[1 + n + k])
        if count == 0:
            rows.append({"time": t})
            continue
        vals = maxs if cf == "MAX" else [s / count for s in sums]
        row = {"time": t}
        row.update(emit(vals))
        rows.append(row)
    return rows
