"""Migration endpoints: preconditions (GET) and the request itself (POST).

The simulator refuses what PVE refuses, with PVE's messages, as 500s (see
`Simulator.check_migration`). An HA-managed guest answers with a `hamigrate`
task that ends at once; the HA stack starts the real `qmigrate` later.
"""

from __future__ import annotations

from typing import Any

from pvesim.api_render import guest_or_500
from pvesim.routing import ApiError, Ctx, P, Router


def _precondition_nodes(ctx: Ctx, g: Any) -> tuple[list[str], dict[str, Any]]:
    sim = ctx.sim
    allowed: list[str] = []
    not_allowed: dict[str, Any] = {}
    for name, n in sim.nodes.items():
        if name == g.node or not n.reachable:
            continue
        blocking = sim.blocking_ha(g, name)
        strict_out = any(
            not r.disable
            and r.type == "node-affinity"
            and r.strict
            and g.sid in r.resources
            and name not in r.node_names()
            for r in sim.rules
        )
        if blocking:
            not_allowed[name] = {"blocking-ha-resources": blocking}
        elif strict_out:
            not_allowed[name] = {"unavailable_storages": []}
        else:
            allowed.append(name)
    return allowed, not_allowed


_CHECK = {"target": P(fmt="pve-node")}


def qemu_migrate_check(ctx: Ctx) -> Any:
    g = guest_or_500(ctx, "qemu")
    ctx.need(f"/vms/{g.vmid}", "VM.Migrate")
    allowed, not_allowed = _precondition_nodes(ctx, g)
    dependent = ctx.sim.dependent_ha(g)
    return {
        "running": 1 if g.running else 0,
        "allowed_nodes": allowed,
        "not_allowed_nodes": not_allowed,
        "local_disks": [dict(d) for d in g.local_disks],
        "local_resources": list(g.local_resources),
        "mapped-resources": [],
        "mapped-resource-info": {},
        "dependent-ha-resources": dependent,
        "has-dbus-vmstate": 0,
    }


def lxc_migrate_check(ctx: Ctx) -> Any:
    g = guest_or_500(ctx, "lxc")
    ctx.need(f"/vms/{g.vmid}", "VM.Migrate")
    allowed, not_allowed = _precondition_nodes(ctx, g)
    return {
        "running": 1 if g.running else 0,
        "allowed-nodes": allowed,
        "not-allowed-nodes": not_allowed,
        "dependent-ha-resources": [],
    }


def _check_quorum(ctx: Ctx) -> None:
    if not ctx.sim.quorate(ctx.served_by) or not ctx.sim.quorate(ctx.params["node"]):
        raise ApiError(500, "cluster not ready - no quorum?")


def _task_user(ctx: Ctx) -> str:
    return ctx.token.token_id


_QEMU_MIGRATE = {
    "target": P(optional=False, fmt="pve-node"),
    "online": P("boolean"),
    "force": P("boolean"),
    "with-local-disks": P("boolean"),
    "with-conntrack-state": P("boolean"),
    "bwlimit": P("integer", minimum=0),
    "migration_network": P(),
    "migration_type": P(enum=("secure", "insecure")),
    "targetstorage": P(),
}


def qemu_migrate(ctx: Ctx) -> Any:
    g = guest_or_500(ctx, "qemu")
    ctx.need(f"/vms/{g.vmid}", "VM.Migrate")
    _check_quorum(ctx)
    return ctx.sim.migrate(
        g.vmid,
        ctx.params["target"],
        user=_task_user(ctx),
        online=ctx.params.get("online"),
        with_local_disks=bool(ctx.params.get("with-local-disks")),
        served_by=ctx.served_by,
    )


_LXC_MIGRATE = {
    "target": P(optional=False, fmt="pve-node"),
    "online": P("boolean"),
    "restart": P("boolean"),
    "timeout": P("integer"),
    "bwlimit": P("number"),
    "target-storage": P(),
}


def lxc_migrate(ctx: Ctx) -> Any:
    g = guest_or_500(ctx, "lxc")
    ctx.need(f"/vms/{g.vmid}", "VM.Migrate")
    _check_quorum(ctx)
    return ctx.sim.migrate(
        g.vmid,
        ctx.params["target"],
        user=_task_user(ctx),
        online=ctx.params.get("online"),
        served_by=ctx.served_by,
        restart=bool(ctx.params.get("restart")),
    )


def register(router: Router) -> None:
    router.add("GET", "/nodes/{node}/qemu/{vmid}/migrate", qemu_migrate_check, _CHECK)
    router.add("GET", "/nodes/{node}/lxc/{vmid}/migrate", lxc_migrate_check, _CHECK)
    router.add("POST", "/nodes/{node}/qemu/{vmid}/migrate", qemu_migrate, _QEMU_MIGRATE)
    router.add("POST", "/nodes/{node}/lxc/{vmid}/migrate", lxc_migrate, _LXC_MIGRATE)
