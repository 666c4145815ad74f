"""Reading a scenario: YAML data → validated fields of a `Scenario`.

Everything is checked up front and an error names the offending key
(`cpu-hotspot.yaml: guests[2].node: unknown node 'pve9'`), so a typo never
becomes a silently different experiment. The parser returns the fields and
`pvesim.scenario` builds the `Scenario`, so this module needs only the part
records of `pvesim.specs`.

Longer than the ~500 lines a module here is kept to, on purpose: it is the
whole format in one reader, a flat list of key checks per section in the
order docs/simulator.md describes them. Split up, a section's checks would
no longer sit next to the typed getters they use, and a reviewer checking
the documented format against the code would read several files for one
table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pvesim.schedule import parse_schedule
from pvesim.specs import (
    DEFAULT_START,
    BackupSpec,
    DemandSpec,
    EventSpec,
    GenerateSpec,
    GuestSpec,
    NodeSpec,
    RuleSpec,
    ScenarioError,
    SimParams,
    TokenSpec,
)

EVENT_ACTIONS = {
    "power_off": ("node",),
    "power_on": ("node",),
    "cut_network": ("node",),
    "restore_network": ("node",),
    "maintenance": ("node",),
    "set_demand": ("vmid",),
    "migrate": ("vmid", "target"),
    "backup": (),
    "set_failure_rate": ("rate",),
}

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: Any, where: str) -> int:
    """Bytes from an int or a string like '8GiB', '512M', '1.5T' (binary units)."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a size, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ScenarioError(f"{where}: size must not be negative")
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "").upper()[:1]
            return int(float(m.group(1)) * _UNITS[unit if unit != "B" else "B"])
    raise ScenarioError(f"{where}: expected a size like 8GiB, got {value!r}")


class Parser:
    """Reads one scenario; `source` names it in every error message."""

    def __init__(self, source: str, base: Path | None) -> None:
        self.source = source
        self.base = base

    def err(self, where: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {where}: {msg}")

    # -- typed getters ---------------------------------------------------
    def mapping(self, v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.err(where, f"expected a mapping, got {type(v).__name__}")
        return v

    def keys(self, d: dict[str, Any], allowed: set[str], where: str) -> None:
        for k in d:
            if k not in allowed:
                raise self.err(f"{where}.{k}" if where else str(k), "unknown key (typo?)")

    def num(self, v: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.err(where, f"expected a number, got {v!r}")
        if lo is not None and v < lo:
            raise self.err(where, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise self.err(where, f"must be <= {hi}, got {v}")
        return float(v)

    def integer(self, v: Any, where: str, lo: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(where, f"expected an integer, got {v!r}")
        if lo is not None and v < lo:
            raise self.err(where, f"must be >= {lo}, got {v}")
        return v

    def boolean(self, v: Any, where: str) -> bool:
        if isinstance(v, bool):
            return v
        if v in (0, 1):
            return bool(v)
        raise self.err(where, f"expected true/false, got {v!r}")

    def string(self, v: Any, where: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.err(where, f"expected a non-empty string, got {v!r}")
        return v

    def size(self, v: Any, where: str) -> int:
        try:
            return parse_size(v, where)
        except ScenarioError as exc:
            raise ScenarioError(f"{self.source}: {exc}") from None

    def strlist(self, v: Any, where: str) -> list[str]:
        if isinstance(v, str):
            return [s for s in re.split(r"[,;\s]+", v) if s]
        if not isinstance(v, list):
            raise self.err(where, f"expected a list, got {v!r}")
        return [self.string(x, f"{where}[{i}]") for i, x in enumerate(v)]

    def seq(self, v: Any, where: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.err(where, f"expected a list, got {type(v).__name__}")
        return v

    # -- sections --------------------------------------------------------
    def scenario(self, data: Any) -> dict[str, Any]:
        """The fields of a `Scenario`, validated."""
        d = self.mapping(data, "top level")
        self.keys(
            d,
            {
                "name",
                "description",
                "nodes",
                "guests",
                "generate_from_traces",
                "ha_rules",
                "options",
                "backup_jobs",
                "tokens",
                "pools",
                "events",
                "sim",
                "thresholds",
                "start_time",
                "duration",
                "cluster_name",
                "trace_file",
                "balancer_config",
            },
            "",
        )
        if "nodes" not in d:
            raise self.err("nodes", "missing (a scenario needs at least one node)")
        nodes = [self.node(x, f"nodes[{i}]") for i, x in enumerate(self.seq(d["nodes"], "nodes"))]
        if not nodes:
            raise self.err("nodes", "empty (a scenario needs at least one node)")
        names = [n.name for n in nodes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise self.err("nodes", f"duplicate node name {sorted(dup)[0]!r}")
        node_set = set(names)
        guests = [
            self.guest(x, f"guests[{i}]", node_set)
            for i, x in enumerate(self.seq(d.get("guests"), "guests"))
        ]
        vmids = [g.vmid for g in guests]
        dupv = {v for v in vmids if vmids.count(v) > 1}
        if dupv:
            raise self.err("guests", f"duplicate vmid {min(dupv)}")
        gen = None
        if d.get("generate_from_traces") is not None:
            gen = self.generate(d["generate_from_traces"], node_set)
        thresholds = self.mapping(d.get("thresholds") or {}, "thresholds")
        self.keys(thresholds, {"cpu_max", "memory_max"}, "thresholds")
        sc: dict[str, Any] = dict(
            name=str(d.get("name") or self.source.removesuffix(".yaml")),
            description=str(d.get("description") or ""),
            nodes=nodes,
            guests=guests,
            generate=gen,
            rules=[
                self.rule(x, f"ha_rules[{i}]", node_set)
                for i, x in enumerate(self.seq(d.get("ha_rules"), "ha_rules"))
            ],
            options=self.options(d.get("options") or {}),
            backups=[
                self.backup(x, f"backup_jobs[{i}]", node_set)
                for i, x in enumerate(self.seq(d.get("backup_jobs"), "backup_jobs"))
            ],
            tokens=None
            if d.get("tokens") is None
            else [
                self.token(x, f"tokens[{i}]") for i, x in enumerate(self.seq(d["tokens"], "tokens"))
            ],
            pools=self.pools(d.get("pools") or {}),
            events=[
                self.event(x, f"events[{i}]", node_set)
                for i, x in enumerate(self.seq(d.get("events"), "events"))
            ],
            sim=self.simparams(d.get("sim") or {}),
            cpu_max=self.num(thresholds.get("cpu_max", 0.8), "thresholds.cpu_max", 0.0, 1.0),
            memory_max=self.num(
                thresholds.get("memory_max", 0.8), "thresholds.memory_max", 0.0, 1.0
            ),
            start_time=self.num(d.get("start_time", DEFAULT_START), "start_time", 0),
            duration=self.num(d.get("duration", 3600), "duration", 0),
            cluster_name=self.string(d.get("cluster_name", "pvesim"), "cluster_name"),
        )
        if d.get("balancer_config") is not None:
            sc["balancer_config"] = self.mapping(d["balancer_config"], "balancer_config")
        if d.get("trace_file") is not None:
            tf = Path(self.string(d["trace_file"], "trace_file"))
            if not tf.is_absolute() and self.base is not None:
                tf = self.base / tf
            sc["trace_file"] = tf
        guest_ids = set(vmids)
        for i, ev in enumerate(sc["events"]):
            vmid = ev.args.get("vmid")
            if vmid is not None and gen is None and vmid not in guest_ids:
                raise self.err(f"events[{i}].vmid", f"unknown guest {vmid}")
        for i, r in enumerate(sc["rules"]):
            for sid in r.resources:
                num = int(sid.split(":", 1)[1])
                if gen is None and num not in guest_ids:
                    raise self.err(f"ha_rules[{i}].resources", f"unknown guest {sid}")
        return sc

    def node(self, v: Any, where: str) -> NodeSpec:
        d = self.mapping(v, where)
        self.keys(
            d,
            {"name", "cores", "memory", "base_memory", "powered", "network", "maintenance"},
            where,
        )
        if "name" not in d:
            raise self.err(f"{where}.name", "missing")
        name = self.string(d["name"], f"{where}.name")
        if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", name):
            raise self.err(f"{where}.name", f"{name!r} is not a valid node name")
        spec = NodeSpec(name=name)
        if "cores" in d:
            spec.cores = self.integer(d["cores"], f"{where}.cores", 1)
        if "memory" in d:
            spec.memory = self.size(d["memory"], f"{where}.memory")
        if "base_memory" in d:
            spec.base_memory = self.size(d["base_memory"], f"{where}.base_memory")
        for k in ("powered", "network", "maintenance"):
            if k in d:
                setattr(spec, k, self.boolean(d[k], f"{where}.{k}"))
        if spec.base_memory >= spec.memory:
            raise self.err(f"{where}.base_memory", "must be smaller than memory")
        return spec

    def demand(self, v: Any, where: str) -> DemandSpec:
        d = self.mapping(v, where)
        self.keys(
            d, {"cpu", "mem", "steps", "spikes", "trace", "offset", "cpu_scale", "mem_scale"}, where
        )
        if "trace" in d:
            return DemandSpec(
                "trace",
                trace_vm=self.integer(d["trace"], f"{where}.trace", 1),
                offset=self.num(d.get("offset", 0), f"{where}.offset", 0),
                cpu_scale=self.num(d.get("cpu_scale", 1.0), f"{where}.cpu_scale", 0),
                mem_scale=self.num(d.get("mem_scale", 1.0), f"{where}.mem_scale", 0),
            )
        spec = DemandSpec(
            "constant",
            cpu=self.num(d.get("cpu", 0.0), f"{where}.cpu", 0),
            mem=None if d.get("mem") is None else self.size(d["mem"], f"{where}.mem"),
        )
        for i, s in enumerate(self.seq(d.get("steps"), f"{where}.steps")):
            w = f"{where}.steps[{i}]"
            sd = self.mapping(s, w)
            self.keys(sd, {"at", "cpu", "mem"}, w)
            spec.steps.append(
                (
                    self.num(sd.get("at"), f"{w}.at", 0),
                    None if sd.get("cpu") is None else self.num(sd["cpu"], f"{w}.cpu", 0),
                    None if sd.get("mem") is None else self.size(sd["mem"], f"{w}.mem"),
                )
            )
        for i, s in enumerate(self.seq(d.get("spikes"), f"{where}.spikes")):
            w = f"{where}.spikes[{i}]"
            sd = self.mapping(s, w)
            self.keys(sd, {"at", "until", "cpu", "mem"}, w)
            start = self.num(sd.get("at"), f"{w}.at", 0)
            end = self.num(sd.get("until"), f"{w}.until", start)
            spec.spikes.append(
                (
                    start,
                    end,
                    None if sd.get("cpu") is None else self.num(sd["cpu"], f"{w}.cpu", 0),
                    None if sd.get("mem") is None else self.size(sd["mem"], f"{w}.mem"),
                )
            )
        if spec.steps or spec.spikes:
            spec.kind = "steps"
        return spec

    def guest(self, v: Any, where: str, nodes: set[str]) -> GuestSpec:
        d = self.mapping(v, where)
        self.keys(
            d,
            {
                "vmid",
                "node",
                "name",
                "type",
                "cores",
                "memory",
                "status",
                "template",
                "lock",
                "tags",
                "ha",
                "local_disks",
                "local_resources",
                "pool",
                "demand",
            },
            where,
        )
        for k in ("vmid", "node"):
            if k not in d:
                raise self.err(f"{where}.{k}", "missing")
        vmid = self.integer(d["vmid"], f"{where}.vmid", 100)
        node = self.string(d["node"], f"{where}.node")
        if node not in nodes:
            raise self.err(f"{where}.node", f"unknown node {node!r}")
        g = GuestSpec(vmid=vmid, node=node, name=str(d.get("name") or f"vm{vmid}"))
        if "type" in d:
            g.type = self.string(d["type"], f"{where}.type")
            if g.type not in ("qemu", "lxc"):
                raise self.err(f"{where}.type", f"must be qemu or lxc, got {g.type!r}")
        if "cores" in d:
            g.cores = self.integer(d["cores"], f"{where}.cores", 1)
        if "memory" in d:
            g.memory = self.size(d["memory"], f"{where}.memory")
        if "status" in d:
            g.status = self.string(d["status"], f"{where}.status")
            if g.status not in ("running", "stopped"):
                raise self.err(f"{where}.status", f"must be running or stopped, got {g.status!r}")
        if "template" in d:
            g.template = self.boolean(d["template"], f"{where}.template")
        if d.get("lock") is not None:
            g.lock = self.string(d["lock"], f"{where}.lock")
        if "tags" in d:
            g.tags = self.strlist(d["tags"], f"{where}.tags")
        if "ha" in d:
            g.ha = self.boolean(d["ha"], f"{where}.ha")
        for i, disk in enumerate(self.seq(d.get("local_disks"), f"{where}.local_disks")):
            w = f"{where}.local_disks[{i}]"
            dd = self.mapping({"volid": disk} if isinstance(disk, str) else disk, w)
            self.keys(dd, {"volid", "size", "cdrom", "is_unused"}, w)
            g.local_disks.append(
                {
                    "volid": self.string(dd.get("volid"), f"{w}.volid"),
                    "size": self.size(dd.get("size", 32 * 1024**3), f"{w}.size"),
                    "cdrom": 1 if self.boolean(dd.get("cdrom", False), f"{w}.cdrom") else 0,
                    "is_unused": 1
                    if self.boolean(dd.get("is_unused", False), f"{w}.is_unused")
                    else 0,
                }
            )
        if "local_resources" in d:
            g.local_resources = self.strlist(d["local_resources"], f"{where}.local_resources")
        if d.get("pool") is not None:
            g.pool = self.string(d["pool"], f"{where}.pool")
        if "demand" in d:
            g.demand = self.demand(d["demand"], f"{where}.demand")
        return g

    def generate(self, v: Any, nodes: set[str]) -> GenerateSpec:
        where = "generate_from_traces"
        d = self.mapping(v, where)
        self.keys(
            d,
            {
                "count",
                "vm_ids",
                "seed",
                "vmid_start",
                "nodes",
                "placement",
                "random_offset",
                "cpu_scale",
                "mem_scale",
                "max_memory",
                "ha_fraction",
                "name_prefix",
            },
            where,
        )
        if "count" not in d and "vm_ids" not in d:
            raise self.err(where, "needs count or vm_ids")
        vm_ids = None
        if d.get("vm_ids") is not None:
            vm_ids = [
                self.integer(x, f"{where}.vm_ids[{i}]", 1)
                for i, x in enumerate(self.seq(d["vm_ids"], f"{where}.vm_ids"))
            ]
        count = self.integer(d.get("count", len(vm_ids or [])), f"{where}.count", 1)
        spec = GenerateSpec(count=count, vm_ids=vm_ids)
        if d.get("seed") is not None:
            spec.seed = self.integer(d["seed"], f"{where}.seed")
        if "vmid_start" in d:
            spec.vmid_start = self.integer(d["vmid_start"], f"{where}.vmid_start", 100)
        if d.get("nodes") is not None:
            spec.nodes = self.strlist(d["nodes"], f"{where}.nodes")
            for n in spec.nodes:
                if n not in nodes:
                    raise self.err(f"{where}.nodes", f"unknown node {n!r}")
        if "placement" in d:
            spec.placement = self.string(d["placement"], f"{where}.placement")
            if spec.placement not in ("round_robin", "random"):
                raise self.err(f"{where}.placement", "must be round_robin or random")
        if "random_offset" in d:
            spec.random_offset = self.boolean(d["random_offset"], f"{where}.random_offset")
        if "cpu_scale" in d:
            spec.cpu_scale = self.num(d["cpu_scale"], f"{where}.cpu_scale", 0)
        if "mem_scale" in d:
            spec.mem_scale = self.num(d["mem_scale"], f"{where}.mem_scale", 0)
        if d.get("max_memory") is not None:
            spec.max_memory = self.size(d["max_memory"], f"{where}.max_memory")
        if "ha_fraction" in d:
            spec.ha_fraction = self.num(d["ha_fraction"], f"{where}.ha_fraction", 0, 1)
        if "name_prefix" in d:
            spec.name_prefix = self.string(d["name_prefix"], f"{where}.name_prefix")
        return spec

    def rule(self, v: Any, where: str, nodes: set[str]) -> RuleSpec:
        d = self.mapping(v, where)
        self.keys(
            d,
            {"rule", "type", "resources", "nodes", "affinity", "strict", "disable", "comment"},
            where,
        )
        for k in ("rule", "type", "resources"):
            if k not in d:
                raise self.err(f"{where}.{k}", "missing")
        rtype = self.string(d["type"], f"{where}.type")
        if rtype not in ("node-affinity", "resource-affinity"):
            raise self.err(f"{where}.type", "must be node-affinity or resource-affinity")
        resources = []
        for item in self.strlist(d["resources"], f"{where}.resources"):
            r = f"vm:{item}" if re.fullmatch(r"\d+", item) else item
            if not re.fullmatch(r"(vm|ct):\d+", r):
                raise self.err(f"{where}.resources", f"{r!r} is not an HA resource id (vm:100)")
            resources.append(r)
        spec = RuleSpec(
            rule=self.string(d["rule"], f"{where}.rule"), type=rtype, resources=resources
        )
        if rtype == "node-affinity":
            if "nodes" not in d:
                raise self.err(f"{where}.nodes", "missing (node-affinity needs nodes)")
            spec.nodes = self.strlist(d["nodes"], f"{where}.nodes")
            for n in spec.nodes:
                if n.split(":", 1)[0] not in nodes:
                    raise self.err(f"{where}.nodes", f"unknown node {n!r}")
            spec.strict = self.boolean(d.get("strict", False), f"{where}.strict")
        else:
            aff = self.string(d.get("affinity", ""), f"{where}.affinity")
            if aff not in ("positive", "negative"):
                raise self.err(f"{where}.affinity", "must be positive or negative")
            spec.affinity = aff
        spec.disable = self.boolean(d.get("disable", False), f"{where}.disable")
        if d.get("comment") is not None:
            spec.comment = str(d["comment"])
        return spec

    def options(self, v: Any) -> dict[str, Any]:
        d = self.mapping(v, "options")
        out: dict[str, Any] = {}
        for k, val in d.items():
            if k == "crs":
                crs = val
                if isinstance(crs, str):
                    crs = dict([*p.split("=", 1), "1"][:2] for p in crs.split(",") if p)
                crs = self.mapping(crs, "options.crs")
                allowed = {
                    "ha",
                    "ha-auto-rebalance",
                    "ha-auto-rebalance-hold-duration",
                    "ha-auto-rebalance-margin",
                    "ha-auto-rebalance-method",
                    "ha-auto-rebalance-threshold",
                    "ha-rebalance-on-start",
                }
                self.keys(crs, allowed, "options.crs")
                out["crs"] = {
                    k2: (int(v2) if isinstance(v2, bool) else v2) for k2, v2 in crs.items()
                }
            else:
                out[k] = val
        return out

    def backup(self, v: Any, where: str, nodes: set[str]) -> BackupSpec:
        d = self.mapping(v, where)
        self.keys(
            d,
            {
                "id",
                "schedule",
                "enabled",
                "node",
                "vmids",
                "storage",
                "mode",
                "seconds_per_guest",
                "comment",
            },
            where,
        )
        for k in ("id", "schedule"):
            if k not in d:
                raise self.err(f"{where}.{k}", "missing")
        sched = self.string(d["schedule"], f"{where}.schedule")
        try:
            parse_schedule(sched)
        except ValueError as exc:
            raise self.err(f"{where}.schedule", str(exc)) from None
        spec = BackupSpec(id=self.string(d["id"], f"{where}.id"), schedule=sched)
        spec.enabled = self.boolean(d.get("enabled", True), f"{where}.enabled")
        if d.get("node") is not None:
            spec.node = self.string(d["node"], f"{where}.node")
            if spec.node not in nodes:
                raise self.err(f"{where}.node", f"unknown node {spec.node!r}")
        if d.get("vmids") is not None:
            spec.vmids = [
                self.integer(x, f"{where}.vmids[{i}]", 100)
                for i, x in enumerate(self.seq(d["vmids"], f"{where}.vmids"))
            ]
        if "storage" in d:
            spec.storage = self.string(d["storage"], f"{where}.storage")
        if "mode" in d:
            spec.mode = self.string(d["mode"], f"{where}.mode")
        if "seconds_per_guest" in d:
            spec.seconds_per_guest = self.num(
                d["seconds_per_guest"], f"{where}.seconds_per_guest", 0
            )
        if d.get("comment") is not None:
            spec.comment = str(d["comment"])
        return spec

    def token(self, v: Any, where: str) -> TokenSpec:
        d = self.mapping(v, where)
        self.keys(d, {"id", "secret", "privileges", "acl"}, where)
        tid = self.string(d.get("id"), f"{where}.id")
        if not re.fullmatch(r"[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*", tid):
            raise self.err(f"{where}.id", f"{tid!r} is not a token id (user@realm!name)")
        acl: dict[str, list[str]] = {}
        if "privileges" in d:
            acl["/"] = self.strlist(d["privileges"], f"{where}.privileges")
        for path, privs in self.mapping(d.get("acl") or {}, f"{where}.acl").items():
            acl[str(path)] = self.strlist(privs, f"{where}.acl.{path}")
        secret = None if d.get("secret") is None else self.string(d["secret"], f"{where}.secret")
        return TokenSpec(tid, secret, acl)

    def pools(self, v: Any) -> dict[str, list[int]]:
        d = self.mapping(v, "pools")
        return {
            str(k): [
                self.integer(x, f"pools.{k}[{i}]", 100)
                for i, x in enumerate(self.seq(m, f"pools.{k}"))
            ]
            for k, m in d.items()
        }

    def event(self, v: Any, where: str, nodes: set[str]) -> EventSpec:
        d = self.mapping(v, where)
        if "at" not in d or "action" not in d:
            raise self.err(where, "an event needs 'at' and 'action'")
        action = self.string(d["action"], f"{where}.action")
        if action not in EVENT_ACTIONS:
            raise self.err(
                f"{where}.action",
                f"unknown action {action!r} (one of {', '.join(sorted(EVENT_ACTIONS))})",
            )
        at = self.num(d["at"], f"{where}.at", 0)
        args = {k: val for k, val in d.items() if k not in ("at", "action")}
        allowed = {
            "node",
            "on",
            "vmid",
            "cpu",
            "mem",
            "target",
            "online",
            "job",
            "rate",
            "user",
        }
        self.keys(args, allowed, where)
        for k in EVENT_ACTIONS[action]:
            if k not in args:
                raise self.err(f"{where}.{k}", f"missing (needed by {action})")
        for k in ("node", "target"):
            if k in args and args[k] not in nodes:
                raise self.err(f"{where}.{k}", f"unknown node {args[k]!r}")
        if "vmid" in args:
            args["vmid"] = self.integer(args["vmid"], f"{where}.vmid", 100)
        if "mem" in args and args["mem"] is not None:
            args["mem"] = self.size(args["mem"], f"{where}.mem")
        if "cpu" in args and args["cpu"] is not None:
            args["cpu"] = self.num(args["cpu"], f"{where}.cpu", 0)
        if action == "maintenance":
            args["on"] = self.boolean(args.get("on", True), f"{where}.on")
        if action == "set_failure_rate":
            args["rate"] = self.num(args["rate"], f"{where}.rate", 0, 1)
        return EventSpec(at, action, args)

    def simparams(self, v: Any) -> SimParams:
        d = self.mapping(v, "sim")
        p = SimParams()
        sizes = {"migration_bandwidth", "dirty_rate_per_core"}
        for k, val in d.items():
            if not hasattr(p, k):
                raise self.err(f"sim.{k}", "unknown key (typo?)")
            if k in sizes:
                setattr(p, k, float(self.size(val, f"sim.{k}")))
            elif k == "migration_failure_rate":
                p.migration_failure_rate = self.num(val, f"sim.{k}", 0, 1)
            elif k == "task_history":
                p.task_history = self.integer(val, f"sim.{k}", 1)
            else:
                setattr(p, k, self.num(val, f"sim.{k}", 0))
        if p.step <= 0 or p.stat_interval <= 0 or p.migration_bandwidth <= 0:
            raise self.err("sim", "step, stat_interval and migration_bandwidth must be > 0")
        return p
