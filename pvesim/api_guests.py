"""Per-guest read endpoints (QEMU and LXC): lists, current status, config
and RRD history."""

from __future__ import annotations

from typing import Any

from pvesim.api_render import (
    digest,
    guest_or_500,
    guest_pressure,
    io_counters,
    rrd_rows,
    uptime,
)
from pvesim.physics import GUEST_PSI
from pvesim.routing import Ctx, P, Router
from pvesim.state import GIB, Guest


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
        "uptime": uptime(ctx, g),
        **io_counters(g),
        **guest_pressure(g, g.type),
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


def qemu_list(ctx: Ctx) -> Any:
    node = ctx.params["node"]
    return [
        _guest_status(ctx, g, bool(ctx.params.get("full")))
        for g in sorted(ctx.sim.guests_on(node), key=lambda x: x.vmid)
        if g.type == "qemu" and ctx.can(f"/vms/{g.vmid}", "VM.Audit")
    ]


def lxc_list(ctx: Ctx) -> Any:
    node = ctx.params["node"]
    return [
        _guest_status(ctx, g)
        for g in sorted(ctx.sim.guests_on(node), key=lambda x: x.vmid)
        if g.type == "lxc" and ctx.can(f"/vms/{g.vmid}", "VM.Audit")
    ]


def _status_current(ctx: Ctx, kind: str) -> Any:
    g = guest_or_500(ctx, kind)
    ctx.need(f"/vms/{g.vmid}", "VM.Audit")
    d = _guest_status(ctx, g)
    if g.ha:
        d["ha"] = {"managed": 1, "state": ctx.sim.ha_state(g)}
    else:
        d["ha"] = {"managed": 0}
    if kind == "qemu":
        d["agent"] = 1
    return d


def qemu_status_current(ctx: Ctx) -> Any:
    return _status_current(ctx, "qemu")


def lxc_status_current(ctx: Ctx) -> Any:
    return _status_current(ctx, "lxc")


_CONFIG_PARAMS = {"current": P("boolean"), "snapshot": P()}


def qemu_config(ctx: Ctx) -> Any:
    g = guest_or_500(ctx, "qemu")
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
        "smbios1": f"uuid={digest(('uuid', g.vmid))[:8]}-0000-4000-8000-{digest(g.vmid)[:12]}",
        "vmgenid": f"{digest(('gen', g.vmid))[:8]}-0000-4000-8000-{digest(('g', g.vmid))[:12]}",
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
    d["digest"] = digest(sorted(d.items()))
    return d


def lxc_config(ctx: Ctx) -> Any:
    g = guest_or_500(ctx, "lxc")
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


def _guest_rrd(ctx: Ctx, kind: str) -> Any:
    g = guest_or_500(ctx, kind)
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
        if len(v) > 3:
            d.update(zip(GUEST_PSI, v[3:], strict=True))
            d["pressureiosome"] = d["pressureiofull"] = 0.0
        return d

    return rrd_rows(
        g.rrd, ctx.sim.now, ctx.params["timeframe"], ctx.params.get("cf", "AVERAGE"), emit
    )


_GUEST_RRD = {
    "timeframe": P(optional=False, enum=("hour", "day", "week", "month", "year")),
    "cf": P(enum=("AVERAGE", "MAX")),
}


def qemu_rrddata(ctx: Ctx) -> Any:
    return _guest_rrd(ctx, "qemu")


def lxc_rrddata(ctx: Ctx) -> Any:
    return _guest_rrd(ctx, "lxc")


def register(router: Router) -> None:
    router.add("GET", "/nodes/{node}/qemu", qemu_list, {"full": P("boolean")})
    router.add("GET", "/nodes/{node}/lxc", lxc_list)
    router.add("GET", "/nodes/{node}/qemu/{vmid}/status/current", qemu_status_current)
    router.add("GET", "/nodes/{node}/lxc/{vmid}/status/current", lxc_status_current)
    router.add("GET", "/nodes/{node}/qemu/{vmid}/config", qemu_config, _CONFIG_PARAMS)
    router.add("GET", "/nodes/{node}/lxc/{vmid}/config", lxc_config, _CONFIG_PARAMS)
    router.add("GET", "/nodes/{node}/qemu/{vmid}/rrddata", qemu_rrddata, _GUEST_RRD)
    router.add("GET", "/nodes/{node}/lxc/{vmid}/rrddata", lxc_rrddata, _GUEST_RRD)
