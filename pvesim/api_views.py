"""Read-only PVE API endpoints. Every number shown is what pvestatd last
published, never the live physics, so clients see PVE's lag. Booleans are
rendered as 0/1 integers, as PVE's Perl JSON encoder sends them."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pvesim.api import NODE, VMID, ApiError, Ctx, P, route
from pvesim.state import GIB, Guest, Node, Rrd

PVE_VERSION = "9.1.1"
PVE_RELEASE = "9.1"
PVE_REPOID = "42db4a6cf"
KERNEL = "6.17.2-1-pve"

TIMEFRAMES = {
    "hour": 60,
    "day": 1800,
    "week": 10800,
    "month": 43200,
    "year": 604800,
    "decade": 6048000,
}
ROWS = 70


def _digest(obj: Any) -> str:
    return hashlib.sha1(repr(obj).encode()).hexdigest()


def _b(v: bool) -> int:
    return 1 if v else 0


def _guest_or_500(ctx: Ctx, kind: str) -> Guest:
    node = ctx.params["node"]
    vmid = ctx.params["vmid"]
    g = ctx.sim.guests.get(vmid)
    if g is None or g.node != node or g.type != kind:
        d = "qemu-server" if kind == "qemu" else "lxc"
        raise ApiError(500, f"Configuration file 'nodes/{node}/{d}/{vmid}.conf' does not exist")
    return g


def _io_counters(g: Guest) -> dict[str, int]:
    """Network and disk counters: rough figures that follow the guest's CPU
    (the balancer never reads them; they are here because PVE sends them)."""
    return {
        "netin": int(g.pub_cpu * 1e6),
        "netout": int(g.pub_cpu * 8e5),
        "diskread": 0,
        "diskwrite": 0,
    }


def _uptime(ctx: Ctx, g: Guest) -> int:
    return int(ctx.sim.now - g.start_time) if g.running else 0


# ---------------------------------------------------------------- version
@route("GET", "/version")
def version(ctx: Ctx) -> Any:
    return {
        "version": PVE_VERSION,
        "release": PVE_RELEASE,
        "repoid": PVE_REPOID,
        "console": "xtermjs",
    }


@route("GET", "/nodes/{node}/version")
def node_version(ctx: Ctx) -> Any:
    return {"version": PVE_VERSION, "release": PVE_RELEASE, "repoid": PVE_REPOID}


# ---------------------------------------------------------------- cluster
@route("GET", "/cluster/status")
def cluster_status(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    sim = ctx.sim
    visible = [n for n in sim.nodes.values() if ctx.sees(n.name)]
    out: list[dict[str, Any]] = [
        {
            "type": "cluster",
            "id": "cluster",
            "name": sim.cluster_name,
            "nodes": len(sim.nodes),
            "version": sim.config_version,
            "quorate": _b(sim.quorate(ctx.served_by)),
        }
    ]
    for n in sim.nodes.values():
        out.append(
            {
                "type": "node",
                "id": f"node/{n.name}",
                "name": n.name,
                "nodeid": n.nodeid,
                "ip": n.ip,
                "online": _b(n in visible),
                "local": _b(n.name == ctx.served_by),
                "level": "",
            }
        )
    return out


def _node_resource(ctx: Ctx, n: Node) -> dict[str, Any]:
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


def _guest_resource(ctx: Ctx, g: Guest) -> dict[str, Any]:
    sim = ctx.sim
    d: dict[str, Any] = {
        "id": f"{g.type}/{g.vmid}",
        "type": g.type,
        "vmid": g.vmid,
        "name": g.name,
        "node": g.node,
        "template": _b(g.template),
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
                "uptime": _uptime(ctx, g),
                **_io_counters(g),
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


@route("GET", "/cluster/resources", {"type": P(enum=("vm", "storage", "node", "sdn"))})
def cluster_resources(ctx: Ctx) -> Any:
    sim = ctx.sim
    want = ctx.params.get("type")
    out: list[dict[str, Any]] = []
    if want in (None, "vm"):
        for g in sorted(sim.guests.values(), key=lambda x: x.vmid):
            if ctx.can(f"/vms/{g.vmid}", "VM.Audit"):
                out.append(_guest_resource(ctx, g))
    if want in (None, "node"):
        for n in sim.nodes.values():
            if ctx.can(f"/nodes/{n.name}", "Sys.Audit"):
                out.append(_node_resource(ctx, n))
    if want in (None, "storage"):
        for n in sim.nodes.values():
            for sid, shared, plugin, content in (
                ("local", 0, "dir", "iso,vztmpl,backup"),
                ("ceph-vm", 1, "rbd", "images,rootdir"),
            ):
                if not (
                    ctx.can(f"/storage/{sid}", "Datastore.Audit")
                    or ctx.can(f"/storage/{sid}", "Datastore.AllocateSpace")
                ):
                    continue
                on = ctx.sees(n.name)
                s: dict[str, Any] = {
                    "id": f"storage/{n.name}/{sid}",
                    "type": "storage",
                    "storage": sid,
                    "node": n.name,
                    "status": "available" if on else "unknown",
                    "shared": shared,
                    "plugintype": plugin,
                    "content": content,
                }
                if on:
                    s.update({"disk": 400 * GIB, "maxdisk": 4000 * GIB})
                out.append(s)
    return out


def _task_entry(t: Any) -> dict[str, Any]:
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


def _may_see_task(ctx: Ctx, t: Any) -> bool:
    return t.user in (ctx.token.token_id, ctx.token.user) or ctx.can(
        f"/nodes/{t.node}", "Sys.Audit"
    )


@route("GET", "/cluster/tasks")
def cluster_tasks(ctx: Ctx) -> Any:
    tasks = [t for t in ctx.sim.tasks if _may_see_task(ctx, t)]
    running = [t for t in tasks if t.running]
    done = [t for t in tasks if not t.running][-200:]
    items = running + done
    items.sort(key=lambda t: (t.running, t.starttime), reverse=True)
    return [_task_entry(t) for t in items]


@route("GET", "/cluster/options")
def cluster_options(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in ctx.sim.options.items()}


@route("GET", "/cluster/backup")
def cluster_backup(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    out = []
    for j in ctx.sim.backup_jobs:
        d: dict[str, Any] = {
            "id": j.id,
            "type": "vzdump",
            "schedule": j.schedule,
            "enabled": _b(j.enabled),
            "storage": j.storage,
            "mode": j.mode,
            "next-run": int(ctx.sim.backup_next_run(j.id)) if j.enabled else None,
        }
        if d["next-run"] is None:
            del d["next-run"]
        if j.vmids is None:
            d["all"] = 1
        else:
            d["vmid"] = ",".join(str(v) for v in j.vmids)
        if j.node:
            d["node"] = j.node
        if j.comment:
            d["comment"] = j.comment
        out.append(d)
    return out


# ---------------------------------------------------------------- HA
@route(
    "GET",
    "/cluster/ha/rules",
    {"type": P(enum=("node-affinity", "resource-affinity")), "resource": P()},
)
def ha_rules(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    out = []
    for i, r in enumerate(ctx.sim.rules):
        if ctx.params.get("type") and r.type != ctx.params["type"]:
            continue
        res = ctx.params.get("resource")
        if res and res not in r.resources and f"vm:{res}" not in r.resources:
            continue
        d: dict[str, Any] = {
            "rule": r.rule,
            "type": r.type,
            "resources": ",".join(r.resources),
            "order": i + 1,
            "digest": _digest(
                (r.rule, r.type, r.resources, r.nodes, r.affinity, r.strict, r.disable)
            ),
        }
        if r.type == "node-affinity":
            d["nodes"] = ",".join(r.nodes)
            d["strict"] = _b(r.strict)
        else:
            d["affinity"] = r.affinity
        if r.disable:
            d["disable"] = 1
        if r.comment:
            d["comment"] = r.comment
        out.append(d)
    return out


@route("GET", "/cluster/ha/resources", {"type": P(enum=("ct", "vm"))})
def ha_resources(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    out = []
    for g in sorted(ctx.sim.guests.values(), key=lambda x: x.vmid):
        if not g.ha:
            continue
        kind = "vm" if g.type == "qemu" else "ct"
        if ctx.params.get("type") and ctx.params["type"] != kind:
            continue
        out.append(
            {
                "sid": g.sid,
                "type": kind,
                "state": g.ha_state,
                "max_restart": 1,
                "max_relocate": 1,
                "failback": 1,
                "digest": _digest((g.sid, g.ha_state)),
            }
        )
    return out


@route("GET", "/cluster/ha/status/manager_status")
def ha_manager_status(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    sim = ctx.sim
    now = int(sim.now)
    node_status = {n: sim.node_ha_status(n) for n in sim.nodes}
    services = {}
    for g in sorted(sim.guests.values(), key=lambda x: x.vmid):
        if g.ha:
            st = sim.ha_state(g)
            entry: dict[str, Any] = {"node": g.node, "state": st, "uid": _digest(g.vmid)[:22]}
            m = sim.migrations.get(g.vmid)
            pend = next((p for p in sim.pending_ha if p.vmid == g.vmid), None)
            if m is not None:
                entry["target"] = m.target
            elif pend is not None:
                entry["target"] = pend.target
            if st == "started":
                entry["running"] = 1
            services[g.sid] = entry
    lrm: dict[str, Any] = {}
    for n in sim.nodes.values():
        active = any(g.ha for g in sim.guests_on(n.name))
        lrm[n.name] = {
            "mode": "maintenance" if n.maintenance else "active",
            "state": ("active" if active else "wait_for_agent_lock") if n.reachable else "unknown",
            "timestamp": now if n.reachable else now - 60,
            "results": {},
        }
    return {
        "manager_status": {
            "master_node": sim.ha_master,
            "node_status": node_status,
            "service_status": services,
            "timestamp": now,
        },
        "quorum": {"node": ctx.served_by, "quorate": "1" if sim.quorate(ctx.served_by) else "0"},
        "lrm_status": lrm,
    }


@route("GET", "/cluster/ha/status/current")
def ha_status_current(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    sim = ctx.sim
    now = int(sim.now)
    q = sim.quorate(ctx.served_by)
    out: list[dict[str, Any]] = [
        {
            "id": "quorum",
            "type": "quorum",
            "node": ctx.served_by,
            "status": "OK" if q else "No quorum on node",
            "quorate": _b(q),
        },
        {
            "id": "master",
            "type": "master",
            "node": sim.ha_master,
            "status": f"{sim.ha_master} (active, {_ctime(now)})",
            "timestamp": now,
        },
    ]
    for n in sim.nodes.values():
        status = sim.node_ha_status(n.name)
        text = {
            "online": f"{n.name} (active, {_ctime(now)})",
            "maintenance": "maintenance mode",
            "unknown": f"{n.name} (old timestamp - dead?, {_ctime(now - 60)})",
        }[status]
        out.append(
            {"id": f"lrm:{n.name}", "type": "lrm", "node": n.name, "status": text, "timestamp": now}
        )
    for g in sorted(sim.guests.values(), key=lambda x: x.vmid):
        if not g.ha:
            continue
        st = sim.ha_state(g)
        out.append(
            {
                "id": f"service:{g.sid}",
                "type": "service",
                "sid": g.sid,
                "node": g.node,
                "state": st,
                "status": st,
                "crm_state": st,
                "request_state": g.ha_state,
                "max_restart": 1,
                "max_relocate": 1,
                "failback": 1,
            }
        )
    return out


def _ctime(t: int) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(t))


# ---------------------------------------------------------------- nodes
@route("GET", "/nodes")
def nodes(ctx: Ctx) -> Any:
    out = []
    for n in ctx.sim.nodes.values():
        if not ctx.can(f"/nodes/{n.name}", "Sys.Audit"):
            continue
        d = _node_resource(ctx, n)
        d.pop("disk", None)
        d.pop("maxdisk", None)
        d.pop("cgroup-mode", None)
        if d["status"] == "online":
            d["ssl_fingerprint"] = ":".join(
                hashlib.sha256(n.name.encode()).hexdigest().upper()[i : i + 2]
                for i in range(0, 64, 2)
            )
        out.append(d)
    return out


@route("GET", "/nodes/{node}")
def node_index(ctx: Ctx) -> Any:
    return [{"name": x} for x in ("lxc", "qemu", "rrddata", "status", "tasks", "version")]


@route("GET", "/nodes/{node}/status")
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


def _rrd_rows(rrd: Rrd, now: float, timeframe: str, cf: str, emit: Any) -> list[dict[str, Any]]:
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


@route(
    "GET",
    "/nodes/{node}/rrddata",
    {
        "timeframe": P(optional=False, enum=tuple(TIMEFRAMES)),
        "cf": P(enum=("AVERAGE", "MAX")),
    },
)
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
        }

    return _rrd_rows(
        n.rrd, ctx.sim.now, ctx.params["timeframe"], ctx.params.get("cf", "AVERAGE"), emit
    )


def _guest_rrd(ctx: Ctx, kind: str) -> Any:
    g = _guest_or_500(ctx, kind)
    ctx.need(f"/vms/{g.vmid}", "VM.Audit")

    def emit(v: list[float]) -> dict[str, Any]:
        d = {
            "cpu": v[0],
            "maxcpu": g.vcpus,
            "mem": v[1],
            "maxmem": g.maxmem,
            "disk": 0,
            "maxdisk": g.maxdisk,
            "diskread": 0,
            "diskwrite": 0,
            "netin": v[0] * 1e6,
            "netout": v[0] * 8e5,
        }
        if kind == "qemu":
            d["memhost"] = v[2]
        return d

    return _rrd_rows(
        g.rrd, ctx.sim.now, ctx.params["timeframe"], ctx.params.get("cf", "AVERAGE"), emit
    )


_GUEST_RRD = {
    "timeframe": P(optional=False, enum=("hour", "day", "week", "month", "year")),
    "cf": P(enum=("AVERAGE", "MAX")),
}


@route("GET", "/nodes/{node}/qemu/{vmid}/rrddata", _GUEST_RRD)
def qemu_rrddata(ctx: Ctx) -> Any:
    return _guest_rrd(ctx, "qemu")


@route("GET", "/nodes/{node}/lxc/{vmid}/rrddata", _GUEST_RRD)
def lxc_rrddata(ctx: Ctx) -> Any:
    return _guest_rrd(ctx, "lxc")


# ---------------------------------------------------------------- guests
def _guest_status(ctx: Ctx, g: Guest, full: bool = True) -> dict[str, Any]:
    running = g.running
    d: dict[str, Any] = {
        "vmid": g.vmid,
        "name": g.name,
        "status": g.status,
        "cpus": g.vcpus,
        "cpu": round(g.pub_cpu, 6) if running else 0,
        "mem": g.pub_mem if running else 0,
        "maxmem": g.maxmem,
        "maxdisk": g.maxdisk,
        "disk": 0,
        "uptime": _uptime(ctx, g),
        **_io_counters(g),
    }
    if g.type == "qemu":
        d["memhost"] = g.pub_memhost if running else 0
        if running:
            d["pid"] = g.pid
            d["qmpstatus"] = "running"
            if full:
                d["running-machine"] = "pc-i440fx-10.0+pve0"
                d["running-qemu"] = "10.0.2"
    else:
        d["maxswap"] = 512 * 1024**2
    if g.tags:
        d["tags"] = ";".join(g.tags)
    if g.lock:
        d["lock"] = g.lock
    if g.template:
        d["template"] = 1
    return d


@route("GET", "/nodes/{node}/qemu", {"full": P("boolean")})
def qemu_list(ctx: Ctx) -> Any:
    node = ctx.params["node"]
    return [
        _guest_status(ctx, g, bool(ctx.params.get("full")))
        for g in sorted(ctx.sim.guests_on(node), key=lambda x: x.vmid)
        if g.type == "qemu" and ctx.can(f"/vms/{g.vmid}", "VM.Audit")
    ]


@route("GET", "/nodes/{node}/lxc")
def lxc_list(ctx: Ctx) -> Any:
    node = ctx.params["node"]
    return [
        _guest_status(ctx, g)
        for g in sorted(ctx.sim.guests_on(node), key=lambda x: x.vmid)
        if g.type == "lxc" and ctx.can(f"/vms/{g.vmid}", "VM.Audit")
    ]


def _status_current(ctx: Ctx, kind: str) -> Any:
    g = _guest_or_500(ctx, kind)
    ctx.need(f"/vms/{g.vmid}", "VM.Audit")
    d = _guest_status(ctx, g)
    if g.ha:
        d["ha"] = {"managed": 1, "state": ctx.sim.ha_state(g)}
    else:
        d["ha"] = {"managed": 0}
    if kind == "qemu":
        d["agent"] = 1
    return d


@route("GET", "/nodes/{node}/qemu/{vmid}/status/current")
def qemu_status_current(ctx: Ctx) -> Any:
    return _status_current(ctx, "qemu")


@route("GET", "/nodes/{node}/lxc/{vmid}/status/current")
def lxc_status_current(ctx: Ctx) -> Any:
    return _status_current(ctx, "lxc")


_CONFIG_PARAMS = {"current": P("boolean"), "snapshot": P()}


@route("GET", "/nodes/{node}/qemu/{vmid}/config", _CONFIG_PARAMS)
def qemu_config(ctx: Ctx) -> Any:
    g = _guest_or_500(ctx, "qemu")
    ctx.need(f"/vms/{g.vmid}", "VM.Audit")
    d: dict[str, Any] = {
        "name": g.name,
        "cores": g.vcpus,
        "sockets": 1,
        "memory": str(g.maxmem // 1024**2),
        "ostype": "l26",
        "scsihw": "virtio-scsi-single",
        "boot": "order=scsi0;net0",
        "scsi0": f"ceph-vm:vm-{g.vmid}-disk-0,iothread=1,size={g.maxdisk // GIB}G",
        "net0": "virtio=BC:24:11:"
        f"{g.vmid // 65536 % 256:02X}:{g.vmid // 256 % 256:02X}:{g.vmid % 256:02X},bridge=vmbr0",
        "smbios1": f"uuid={_digest(('uuid', g.vmid))[:8]}-0000-4000-8000-{_digest(g.vmid)[:12]}",
        "vmgenid": f"{_digest(('gen', g.vmid))[:8]}-0000-4000-8000-{_digest(('g', g.vmid))[:12]}",
        "meta": "creation-qemu=10.0.2,ctime=1760000000",
        "cpu": "x86-64-v2-AES",
    }
    for i, disk in enumerate(g.local_disks, start=1):
        size = int(str(disk.get("size", 0)))
        key = "ide2" if disk.get("cdrom") else f"scsi{i}"
        d[key] = f"{disk['volid']},size={max(1, size // GIB)}G" + (
            ",media=cdrom" if disk.get("cdrom") else ""
        )
    for i, res in enumerate(g.local_resources):
        if res.startswith(("hostpci", "usb", "serial", "parallel")):
            d[res] = "0000:01:00.0" if res.startswith("hostpci") else "host=1-2"
        else:
            d[f"hostpci{i}"] = res
    return _with_common_config(d, g)


def _with_common_config(d: dict[str, Any], g: Guest) -> dict[str, Any]:
    """The keys QEMU and LXC configs share (tags, lock, template) and the
    digest PVE computes over the whole config."""
    if g.tags:
        d["tags"] = ";".join(g.tags)
    if g.lock:
        d["lock"] = g.lock
    if g.template:
        d["template"] = 1
    d["digest"] = _digest(sorted(d.items()))
    return d


@route("GET", "/nodes/{node}/lxc/{vmid}/config", _CONFIG_PARAMS)
def lxc_config(ctx: Ctx) -> Any:
    g = _guest_or_500(ctx, "lxc")
    ctx.need(f"/vms/{g.vmid}", "VM.Audit")
    d: dict[str, Any] = {
        "hostname": g.name,
        "cores": g.vcpus,
        "memory": g.maxmem // 1024**2,
        "swap": 512,
        "ostype": "debian",
        "arch": "amd64",
        "rootfs": f"ceph-vm:vm-{g.vmid}-disk-0,size={g.maxdisk // GIB}G",
        "net0": "name=eth0,bridge=vmbr0,ip=dhcp,type=veth",
        "unprivileged": 1,
    }
    for i, disk in enumerate(g.local_disks):
        d[f"mp{i}"] = f"{disk['volid']},mp=/data{i}"
    return _with_common_config(d, g)


# ---------------------------------------------------------------- tasks
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


@route("GET", "/nodes/{node}/tasks", _TASK_LIST)
def node_tasks(ctx: Ctx) -> Any:
    node = ctx.params["node"]
    p = ctx.params
    source = p.get("source", "archive")
    items = []
    for t in reversed(ctx.sim.tasks):
        if t.node != node or not _may_see_task(ctx, t):
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
    return [_task_entry(t) for t in items[start : start + limit]]


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
    if not _may_see_task(ctx, t):
        raise ApiError(403, f"Permission check failed (/nodes/{t.node}, Sys.Audit)")
    return t


@route("GET", "/nodes/{node}/tasks/{upid}")
def task_index(ctx: Ctx) -> Any:
    _task_or_500(ctx)
    return [{"name": "log"}, {"name": "status"}]


@route("GET", "/nodes/{node}/tasks/{upid}/status")
def task_status(ctx: Ctx) -> Any:
    t = _task_or_500(ctx)
    d = _task_entry(t)
    d.pop("endtime", None)
    d.pop("status", None)
    d["status"] = "running" if t.running else "stopped"
    if not t.running:
        d["exitstatus"] = t.exitstatus
    return d


@route(
    "GET",
    "/nodes/{node}/tasks/{upid}/log",
    {"start": P("integer", minimum=0), "limit": P("integer", minimum=0), "download": P("boolean")},
)
def task_log(ctx: Ctx) -> Any:
    t = _task_or_500(ctx)
    start = ctx.params.get("start", 0)
    limit = ctx.params.get("limit", 50)
    lines = t.log if t.log else ["no content"]
    return [{"n": i + 1, "t": s} for i, s in enumerate(lines)][start : start + limit]


# ---------------------------------------------------------------- access, pools
@route("GET", "/access/permissions", {"path": P(), "userid": P()})
def access_permissions(ctx: Ctx) -> Any:
    tok = ctx.token
    uid = ctx.params.get("userid")
    if uid and uid not in (tok.token_id, tok.user) and not ctx.can("/access", "Sys.Audit"):
        raise ApiError(403, "Permission check failed (/access, Sys.Audit)")
    if uid and uid not in (tok.token_id, tok.user):
        target = ctx.sim.token_objs.get(uid)
        if target is None:
            return {}
        tok = target
    path = ctx.params.get("path")
    if path:
        return {path: {p: 1 for p in sorted(tok.privs_at(path))}}
    return {p: {x: 1 for x in sorted(privs)} for p, privs in sorted(tok.acl.items())}


@route(
    "GET",
    "/pools",
    {"poolid": P(), "type": P(enum=("qemu", "lxc", "storage"))},
)
def pools(ctx: Ctx) -> Any:
    sim = ctx.sim
    out = []
    for pid, members in sorted(sim.pools.items()):
        if ctx.params.get("poolid") and ctx.params["poolid"] != pid:
            continue
        if not (ctx.can(f"/pool/{pid}", "Pool.Audit")):
            continue
        entry: dict[str, Any] = {"poolid": pid}
        if ctx.params.get("poolid"):
            mem = []
            for vmid in members:
                g = sim.guests.get(vmid)
                if g is None:
                    continue
                if ctx.params.get("type") and ctx.params["type"] != g.type:
                    continue
                mem.append(_guest_resource(ctx, g))
            entry["members"] = mem
        out.append(entry)
    return out


__all__ = ["NODE", "VMID"]
