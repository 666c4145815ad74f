"""Cluster-wide read endpoints: version, cluster status and resources, the
cluster task list, options, backup jobs, permissions and pools."""

from __future__ import annotations

from typing import Any

from pvesim.api_render import (
    PVE_RELEASE,
    PVE_REPOID,
    PVE_VERSION,
    guest_resource,
    may_see_task,
    node_resource,
    pve_bool,
    task_entry,
)
from pvesim.routing import ApiError, Ctx, P, Router
from pvesim.state import GIB


def version(ctx: Ctx) -> Any:
    return {
        "version": PVE_VERSION,
        "release": PVE_RELEASE,
        "repoid": PVE_REPOID,
        "console": "xtermjs",
    }


def node_version(ctx: Ctx) -> Any:
    return {"version": PVE_VERSION, "release": PVE_RELEASE, "repoid": PVE_REPOID}


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
            "quorate": pve_bool(sim.quorate(ctx.served_by)),
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
                "online": pve_bool(n in visible),
                "local": pve_bool(n.name == ctx.served_by),
                "level": "",
            }
        )
    return out


def cluster_resources(ctx: Ctx) -> Any:
    sim = ctx.sim
    want = ctx.params.get("type")
    out: list[dict[str, Any]] = []
    if want in (None, "vm"):
        for g in sorted(sim.guests.values(), key=lambda x: x.vmid):
            if ctx.can(f"/vms/{g.vmid}", "VM.Audit"):
                out.append(guest_resource(ctx, g))
    if want in (None, "node"):
        for n in sim.nodes.values():
            if ctx.can(f"/nodes/{n.name}", "Sys.Audit"):
                out.append(node_resource(ctx, n))
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


def cluster_tasks(ctx: Ctx) -> Any:
    tasks = [t for t in ctx.sim.tasks if may_see_task(ctx, t)]
    running = [t for t in tasks if t.running]
    done = [t for t in tasks if not t.running][-200:]
    items = running + done
    items.sort(key=lambda t: (t.running, t.starttime), reverse=True)
    return [task_entry(t) for t in items]


def cluster_options(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in ctx.sim.options.items()}


def cluster_backup(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    out = []
    for j in ctx.sim.backup_jobs:
        d: dict[str, Any] = {
            "id": j.id,
            "type": "vzdump",
            "schedule": j.schedule,
            "enabled": pve_bool(j.enabled),
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
            entry["members"] = _pool_members(ctx, members)
        out.append(entry)
    return out


def _pool_members(ctx: Ctx, members: list[int]) -> list[dict[str, Any]]:
    """A pool's guests as `/cluster/resources` lists them (PVE builds the
    member list from the same resource entries), filtered by `type`."""
    out = []
    for vmid in members:
        g = ctx.sim.guests.get(vmid)
        if g is None:
            continue
        if ctx.params.get("type") and ctx.params["type"] != g.type:
            continue
        out.append(guest_resource(ctx, g))
    return out


def pool(ctx: Ctx) -> Any:
    """The deprecated single-pool read, which clients still use (ProxLB's
    pool affinity does): unknown pool is a 500 as in PVE."""
    pid = ctx.params["poolid"]
    ctx.need(f"/pool/{pid}", "Pool.Audit")
    members = ctx.sim.pools.get(pid)
    if members is None:
        raise ApiError(500, f"pool '{pid}' does not exist")
    return {"members": _pool_members(ctx, members)}


def register(router: Router) -> None:
    router.add("GET", "/version", version)
    router.add("GET", "/nodes/{node}/version", node_version)
    router.add("GET", "/cluster/status", cluster_status)
    router.add(
        "GET",
        "/cluster/resources",
        cluster_resources,
        {"type": P(enum=("vm", "storage", "node", "sdn"))},
    )
    router.add("GET", "/cluster/tasks", cluster_tasks)
    router.add("GET", "/cluster/options", cluster_options)
    router.add("GET", "/cluster/backup", cluster_backup)
    router.add("GET", "/access/permissions", access_permissions, {"path": P(), "userid": P()})
    router.add("GET", "/pools", pools, {"poolid": P(), "type": P(enum=("qemu", "lxc", "storage"))})
    router.add("GET", "/pools/{poolid}", pool, {"type": P(enum=("qemu", "lxc", "storage"))})
