"""The HA stack as the API shows it: rules, resources, the manager status
and the current status (`ha-manager status`)."""

from __future__ import annotations

import time
from typing import Any

from pvesim.api_render import digest, pve_bool
from pvesim.routing import Ctx, P, Router


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
            "digest": digest(
                (r.rule, r.type, r.resources, r.nodes, r.affinity, r.strict, r.disable)
            ),
        }
        if r.type == "node-affinity":
            d["nodes"] = ",".join(r.nodes)
            d["strict"] = pve_bool(r.strict)
        else:
            d["affinity"] = r.affinity
        if r.disable:
            d["disable"] = 1
        if r.comment:
            d["comment"] = r.comment
        out.append(d)
    return out


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
                "digest": digest((g.sid, g.ha_state)),
            }
        )
    return out


def ha_manager_status(ctx: Ctx) -> Any:
    ctx.need("/", "Sys.Audit")
    sim = ctx.sim
    now = int(sim.now)
    node_status = {n: sim.node_ha_status(n) for n in sim.nodes}
    services = {}
    for g in sorted(sim.guests.values(), key=lambda x: x.vmid):
        if g.ha:
            st = sim.ha_state(g)
            entry: dict[str, Any] = {"node": g.node, "state": st, "uid": digest(g.vmid)[:22]}
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
            "quorate": pve_bool(q),
        },
        {
            "id": "master",
            "type": "master",
            "node": sim.ha_master,
            "status": f"{sim.ha_master} (active, {_ctime(now)})",
            "timestamp": now,
        },
        # PVE 9.1's fencing entry (HA can be disarmed cluster-wide); the
        # simulator never disarms, so it is armed, with PVE's default mode
        # for resources while disarmed
        {
            "id": "fencing",
            "type": "fencing",
            "node": sim.ha_master,
            "status": "armed",
            "armed-state": "armed",
            "resource_mode": "freeze",
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


def register(router: Router) -> None:
    router.add(
        "GET",
        "/cluster/ha/rules",
        ha_rules,
        {"type": P(enum=("node-affinity", "resource-affinity")), "resource": P()},
    )
    router.add("GET", "/cluster/ha/resources", ha_resources, {"type": P(enum=("ct", "vm"))})
    router.add("GET", "/cluster/ha/status/manager_status", ha_manager_status)
    router.add("GET", "/cluster/ha/status/current", ha_status_current)
