"""The endpoints of PVE's API the agent uses, as the fault campaign
targets them: the request's method and path (a glob as
`pvesim.faults.Fault.path`), the field a `missing_fields` fault drops,
and whether the answer is a fact the policy needs read fresh (so an
unreadable answer must mean no migration: fail closed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # a glob as `pvesim.faults.Fault.path`
    field: str  # what `missing_fields` drops
    fact: bool  # a fact the policy needs fresh (fail closed when unreadable)


ENDPOINTS = [
    Endpoint("resources", "GET", "/cluster/resources", "maxmem", True),
    Endpoint("tasks", "GET", "/cluster/tasks", "endtime", True),
    Endpoint("rules", "GET", "/cluster/ha/rules", "resources", True),
    Endpoint("options", "GET", "/cluster/options", "crs", True),
    Endpoint("backup", "GET", "/cluster/backup", "schedule", True),
    Endpoint("manager-status", "GET", "/cluster/ha/status/manager_status", "manager_status",
             True),
    Endpoint("node-rrd", "GET", "/nodes/*/rrddata", "cpu", False),
    Endpoint("preconditions", "GET", "/nodes/*/qemu/*/migrate", "local_disks", False),
    Endpoint("version", "GET", "/version", "release", False),
    Endpoint("migrate", "POST", "/nodes/*/qemu/*/migrate", "data", False),
    Endpoint("task-status", "GET", "/nodes/*/tasks/*/status", "status", False),
]
