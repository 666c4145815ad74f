"""Per-node read endpoints: the node list, a node's status and RRD history,
and its tasks (list, status, log)."""

from __future__ import annotations

import hashlib
from typing import Any

from pvesim.api_render import (
    PVE_REPOID,
    PVE_VERSION,
    TIMEFRAMES,
    may_see_task,
    node_resource,
    rrd_rows,
    task_entry,
)
from pvesim.physics import NODE_PSI
from pvesim.routing import ApiError, Ctx, P, Router
from pvesim.state import GIB

KERNEL = "6.17.2-1-pve"


def nodes(ctx: Ctx) -> Any:
    out = []
    for n in ctx.sim.nodes.values():
        if not ctx.can(f"/nodes/{n.name}", "Sys.Audit"):
            continue
        d = node_resource(ctx, n)
        # `disk`/`maxdisk` stay: PVE's node list adds them (extract_node_stats)
        # although its schema does not list them, and clients read them
        d.pop("cgroup-mode", None)
        if d["status"] == "online":
            d["ssl_fingerprint"] = ":".join(
                hashlib.sha256(n.name.encode()).hexdigest().upper()[i : i + 2]
                for i in range(0, 64, 2)
            )
        out.append(d)
    return out


def node_index(ctx: Ctx) -> Any:
    return [{"name": x} for x in ("lxc", "qemu", "rrddata", "status", "tasks", "version")]


def node_status(ctx: Ctx) -> Any:
    name = ctx.params["node"]
    ctx.need(f"/nodes/{name}", "Sys.Audit")
    n = ctx.sim.nodes[name]
    la = n.pub_loadavg
    return {
        "cpu": round(n.pub_cpu, 6),
        "wait": 0.0,
        "idle": 0,
        "uptime": int(ctx.sim.now - n.boot_time),
        "loadavg": [f"{la:.2f}", f"{la:.2f}", f"{la:.2f}"],
        "cpuinfo": {
            "cores": n.cores // (2 * n.sockets) or 1,
            "cpus": n.cores,
            "sockets": n.sockets,
            "model": n.cpu_model,
            "mhz": "2000.000",
            "hvm": "1",
            "user_hz": 100,
            "flags": "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov",
        },
        "memory": {
            "total": n.memory,
            "used": n.pub_mem,
            "free": max(0, n.memory - n.pub_mem),
            "available": max(0, n.memory - n.pub_mem),
        },
        "swap": {"total": 8 * GIB, "used": 0, "free": 8 * GIB},
        "rootfs": {"total": 100 * GIB, "used": 12 * GIB, "free": 88 * GIB, "avail": 83 * GIB},
        "ksm": {"shared": 0},
        "kversion": f"Linux {KERNEL} #1 SMP PREEMPT_DYNAMIC PMX {KERNEL} x86_64",
        "pveversion": f"pve-manager/{PVE_VERSION}/{PVE_REPOID}",
        "current-kernel": {
            "sysname": "Linux",
            "release": KERNEL,
            "version": f"#1 SMP PREEMPT_DYNAMIC PMX {KERNEL}",
            "machine": "x86_64",
        },
        "boot-info": {"mode": "efi", "secureboot": 0},
    }


def node_rrddata(ctx: Ctx) -> Any:
    name = ctx.params["node"]
    ctx.need(f"/nodes/{name}", "Sys.Audit")
    n = ctx.sim.nodes[name]

    def emit(v: list[float]) -> dict[str, Any]:
        return {
            "cpu": v[0],
            "maxcpu": n.cores,
            "memused": v[1],
            "memtotal": n.memory,
            "memavailable": n.memory - v[1],
            "loadavg": v[2],
            "iowait": 0.0,
            "swaptotal": 8 * GIB,
            "swapused": 0,
            "roottotal": 100 * GIB,
            "rootused": 12 * GIB,
            "netin": v[0] * 5e7,
            "netout": v[0] * 4e7,
            "pressureiosome": 0.0,
            "pressureiofull": 0.0,
            **dict(zip(NODE_PSI, v[3:], strict=True)),
        }

    return rrd_rows(
        n.rrd, ctx.sim.now, ctx.params["timeframe"], ctx.params.get("cf", "AVERAGE"), emit
    )


_TASK_LIST = {
    "errors": P("boolean"),
    "limit": P("integer", minimum=0),
    "start": P("integer", minimum=0),
    "since": P("integer"),
    "until": P("integer"),
    "source": P(enum=("archive", "active", "all")),
    "statusfilter": P(),
    "typefilter": P(),
    "userfilter": P(),
    "vmid": P("integer", fmt="pve-vmid"),
}


def node_tasks(ctx: Ctx) -> Any:
    node = ctx.params["node"]
    p = ctx.params
    source = p.get("source", "archive")
    items = []
    for t in reversed(ctx.sim.tasks):
        if t.node != node or not may_see_task(ctx, t):
            continue
        if source == "archive" and t.running:
            continue
        if source == "active" and not t.running:
            continue
        if p.get("vmid") is not None and t.id != str(p["vmid"]):
            continue
        if p.get("typefilter") and t.type != p["typefilter"]:
            continue
        if p.get("userfilter") and p["userfilter"] not in t.user:
            continue
        if p.get("errors") and (t.running or t.exitstatus == "OK"):
            continue
        if p.get("since") is not None and t.starttime < p["since"]:
            continue
        if p.get("until") is not None and t.starttime > p["until"]:
            continue
        if p.get("statusfilter"):
            wanted = set(p["statusfilter"].split(","))
            kind = "running" if t.running else ("ok" if t.exitstatus == "OK" else "error")
            if kind not in wanted:
                continue
        items.append(t)
    start = p.get("start", 0)
    limit = p.get("limit", 50)
    return [task_entry(t) for t in items[start : start + limit]]


def _task_or_500(ctx: Ctx) -> Any:
    upid = ctx.params["upid"]
    parts = upid.split(":")
    if len(parts) != 9 or parts[0] != "UPID":
        raise ApiError(
            400, "Parameter verification failed.", {"upid": "unable to parse worker upid"}
        )
    t = ctx.sim.find_task(upid)
    if t is None or t.node != ctx.params["node"]:
        raise ApiError(500, f"no such task '{upid}'" if t is None else "no such task")
    if not may_see_task(ctx, t):
        raise ApiError(403, f"Permission check failed (/nodes/{t.node}, Sys.Audit)")
    return t


def task_index(ctx: Ctx) -> Any:
    _task_or_500(ctx)
    return [{"name": "log"}, {"name": "status"}]


def task_status(ctx: Ctx) -> Any:
    t = _task_or_500(ctx)
    d = task_entry(t)
    d.pop("endtime", None)
    d.pop("status", None)
    d["status"] = "running" if t.running else "stopped"
    if not t.running:
        d["exitstatus"] = t.exitstatus
    return d


def task_log(ctx: Ctx) -> Any:
    t = _task_or_500(ctx)
    start = ctx.params.get("start", 0)
    limit = ctx.params.get("limit", 50)
    lines = t.log if t.log else ["no content"]
    return [{"n": i + 1, "t": s} for i, s in enumerate(lines)][start : start + limit]


def register(router: Router) -> None:
    router.add("GET", "/nodes", nodes)
    router.add("GET", "/nodes/{node}", node_index)
    router.add("GET", "/nodes/{node}/status", node_status)
    router.add(
        "GET",
        "/nodes/{node}/rrddata",
        node_rrddata,
        {
        "timeframe": P(optional=False, enum=tuple(TIMEFRAMES)),
        "cf": P(enum=("AVERAGE", "MAX")),
    },
    )
    router.add("GET", "/nodes/{node}/tasks", node_tasks, _TASK_LIST)
    router.add("GET", "/nodes/{node}/tasks/{upid}", task_index)
    router.add("GET", "/nodes/{node}/tasks/{upid}/status", task_status)
    router.add(
        "GET",
        "/nodes/{node}/tasks/{upid}/log",
        task_log,
        {
            "start": P("integer", minimum=0),
            "limit": P("integer", minimum=0),
            "download": P("boolean"),
        },
    )
