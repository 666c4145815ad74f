"""Every endpoint the simulator implements, checked against PVE 9.1's schema.

For each (method, path template) in `pvesim.api.routes()`:
- the endpoint exists in the official schema;
- every parameter the simulator accepts exists there with the same type,
  the same required-ness and an enum within the schema's; every parameter
  the schema requires is accepted;
- an unknown parameter is refused with 400 and names it, as PVE does;
- called in-process with valid parameters (the required ones, then each
  optional one in turn with each value worth trying), it answers 200 and
  the returned `data` satisfies the `returns` schema (types, required
  properties, no unlisted properties).
The last test runs the same walk against a handler that corrupts one field
and shows the check catches it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from pvesim.api import routes
from pvesim.cluster import Simulator
from pvesim.protocol import ApiHandler, ApiRequest, ApiResponse
from pvesim.routing import Route
from pvesim.scenario import Scenario
from tests.pvesim.schema_check import (
    ApiSchema,
    Endpoint,
    check_params,
    check_response,
    missing_properties,
)

ROOT = "root@pam!admin"
ROUTES = sorted(routes(), key=lambda r: (r.template, r.method))

SCENARIO: dict[str, Any] = {
    "name": "schema-walk",
    "nodes": [{"name": f"pve{i}", "cores": 16, "memory": "64G"} for i in (1, 2, 3)],
    "guests": [
        {"vmid": 100, "node": "pve1", "cores": 2, "memory": "4G", "tags": "web;prod",
         "pool": "prod", "ha": True, "demand": {"cpu": 0.5, "mem": "2G"}},
        {"vmid": 101, "node": "pve1", "cores": 2, "memory": "4G", "pool": "prod",
         "demand": {"cpu": 1.0, "mem": "3G"}},
        {"vmid": 102, "node": "pve2", "cores": 4, "memory": "8G",
         "demand": {"cpu": 2.0, "mem": "6G"}},
        {"vmid": 103, "node": "pve1", "cores": 1, "memory": "1G",
         "demand": {"cpu": 0.1, "mem": "512M"}},
        {"vmid": 200, "node": "pve1", "type": "lxc", "cores": 1, "memory": "1G",
         "demand": {"cpu": 0.2, "mem": "256M"}},
        {"vmid": 900, "node": "pve3", "status": "stopped", "template": True,
         "memory": "2G"},
    ],
    "ha_rules": [
        {"rule": "apart", "type": "resource-affinity", "resources": ["vm:100", "vm:101"],
         "affinity": "negative"},
        {"rule": "pin", "type": "node-affinity", "resources": ["vm:100"], "nodes": ["pve1"]},
    ],
    "backup_jobs": [{"id": "nightly", "schedule": "21:00", "vmids": [100, 102]}],
}


# Fields real PVE 9 returns beyond what its schema lists there (the schema
# leaves additionalProperties undefined, which PVE's validator accepts).
# Each is something a PVE client sees on a real cluster; anything else the
# simulator adds is reported.
KNOWN_EXTRAS: dict[tuple[str, str], dict[str, frozenset[str]]] = {
    ("GET", "/nodes"): {"data[]": frozenset({"id", "type", "disk", "maxdisk"})},
    ("GET", "/cluster/tasks"): {"data[]": frozenset(
        {"endtime", "id", "node", "pid", "pstart", "starttime", "status", "type", "user"})},
    ("GET", "/cluster/backup"): {"data[]": frozenset({"type"})},
    ("GET", "/cluster/ha/rules"): {"data[]": frozenset(
        {"affinity", "digest", "nodes", "order", "resources", "strict", "type", "disable",
         "comment"})},
    ("GET", "/cluster/ha/resources"): {"data[]": frozenset(
        {"digest", "failback", "max_relocate", "max_restart", "state", "type", "group",
         "comment"})},
    ("GET", "/nodes/{node}/qemu"): {"data[]": frozenset({"disk"})},
    ("GET", "/nodes/{node}/qemu/{vmid}/status/current"): {"data": frozenset({"disk"})},
    ("GET", "/nodes/{node}/status"): {"data.cpuinfo": frozenset(
        {"flags", "hvm", "mhz", "user_hz"})},
}


# Properties PVE's schema lists that the simulator does not serve, each with
# the reason (location.property, locations as the checker writes them;
# `location.*`: any property there).
_LOCK = "only while a guest is locked (migration, backup); the walk reads between them"
_TEMPLATE = "only on templates; the walked node holds none (the template is on pve3)"
_SERIAL = "only with a serial port configured; no simulated guest has one"
_CONFIG = "a config lists only the keys that are set; the simulated guests set none of these"
NOT_SERVED: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/cluster/backup"): {
        "data[].*": "job options appear only when set; simulated jobs set schedule, "
                    "selection and storage"},
    ("GET", "/cluster/resources"): {
        "data[].lock": _LOCK,
        **{f"data[].{k}": "type 'sdn'/'network' entries: the simulator has no SDN"
           for k in ("network", "network-type", "protocol", "sdn", "zone-type")}},
    ("GET", "/nodes/{node}/lxc"): {
        "data[].lock": _LOCK, "data[].template": _TEMPLATE,
        "data[].tags": "only for tagged containers; the walked one has no tags"},
    ("GET", "/nodes/{node}/lxc/{vmid}/status/current"): {
        "data.lock": _LOCK, "data.template": _TEMPLATE,
        "data.tags": "only for tagged containers; the walked one has no tags"},
    ("GET", "/nodes/{node}/lxc/{vmid}/config"): {"data.*": _CONFIG},
    ("GET", "/nodes/{node}/qemu/{vmid}/config"): {"data.*": _CONFIG},
    ("GET", "/nodes/{node}/qemu"): {
        "data[].lock": _LOCK, "data[].template": _TEMPLATE, "data[].serial": _SERIAL},
    ("GET", "/nodes/{node}/qemu/{vmid}/status/current"): {
        "data.lock": _LOCK, "data.template": _TEMPLATE, "data.serial": _SERIAL,
        "data.clipboard": "display options (SPICE, clipboard) are not modelled",
        "data.spice": "display options (SPICE, clipboard) are not modelled"},
    ("GET", "/nodes/{node}/lxc/{vmid}/migrate"): {
        "data.not-allowed-nodes.blocking-ha-resources":
            "only for HA containers blocked by a rule; the walked container is not HA"},
    ("GET", "/nodes/{node}/qemu/{vmid}/migrate"): {
        **{f"data.local_disks[].{k}": "only for guests with local disks; the walked VM "
           "has none" for k in ("cdrom", "is_unused", "size", "volid")},
        "data.not_allowed_nodes.blocking-ha-resources":
            "HA-rule blocking is enforced when the migration starts, not in the precondition",
        "data.not_allowed_nodes.unavailable_storages":
            "all simulated guest storage is shared, so no node lacks one"},
    ("GET", "/pools"): {
        "data[].comment": "the simulated pools carry no comment",
        "data[].members[].storage": "simulated pools hold guests only"},
    ("GET", "/pools/{poolid}"): {
        "data.comment": "the simulated pools carry no comment",
        "data.members[].storage": "simulated pools hold guests only"},
}


@pytest.fixture(scope="module")
def schema() -> ApiSchema:
    return ApiSchema.load()


def call(handler: ApiHandler, sim: Simulator, method: str, path: str,
         params: dict[str, str], served_by: str = "pve1") -> ApiResponse:
    return handler.handle(ApiRequest(
        method=method, path=path, params=params, served_by=served_by,
        headers={"authorization": f"PVEAPIToken={ROOT}={sim.tokens[ROOT]}"},
    ))


def make_sim() -> tuple[Simulator, str]:
    """A cluster with history: a finished migration task, RRD minutes."""
    sim = Simulator(Scenario.from_dict(SCENARIO), seed=5)
    resp = call(sim, sim, "POST", "/nodes/pve1/qemu/103/migrate", {"target": "pve3", "online": "1"})
    assert resp.status == 200, resp.reason
    upid = json.loads(resp.body)["data"]
    sim.advance(600)
    return sim, upid


class Values:
    """Valid values for a parameter of a route, in the walked cluster."""

    def __init__(self, sim: Simulator, upid: str) -> None:
        self.sim = sim
        self.upid = upid

    def path_params(self, route: Route) -> dict[str, str]:
        out: dict[str, str] = {}
        names = [p[1:-1] for p in route.parts if p.startswith("{")]
        lxc = "/lxc/" in route.template
        for name in names:
            if name == "node":
                out[name] = "pve1"
            elif name == "vmid":
                out[name] = "200" if lxc else "100"
            elif name == "upid":
                out[name] = self.upid
            elif name == "poolid":
                out[name] = "prod"
            else:
                raise AssertionError(f"no value for path parameter {name} of {route.template}")
        if "upid" in out:
            out["node"] = self.upid.split(":")[1]
        return out

    def choices(self, route: Route, name: str, schema: dict[str, Any]) -> list[str]:
        spec = route.params[name]
        if spec.enum:
            return list(spec.enum)
        special = {
            "target": ["pve2"], "vmid": ["100"], "since": [str(int(self.sim.now - 3600))],
            "until": [str(int(self.sim.now))], "start": ["0", "1"], "limit": ["1", "50"],
            "typefilter": ["qmigrate"], "userfilter": ["root@pam"], "statusfilter": ["ok"],
            "poolid": ["prod"], "path": ["/vms/100", "/"], "userid": ["pve-balancer@pve!agent"],
            "resource": ["vm:100"], "current": ["1", "0"], "snapshot": [], "errors": ["0", "1"],
        }
        if name in special:
            return special[name]
        if spec.type == "boolean":
            return ["1", "0"]
        if spec.type in ("integer", "number"):
            low = schema.get("minimum")
            return [str(int(float(low))) if low is not None else "1"]
        return []


def route_static_problems(route: Route, endpoint: Endpoint) -> list[str]:
    spec = endpoint.parameters
    props: dict[str, Any] = dict(spec.get("properties") or {})
    problems: list[str] = []
    for name, mine in route.params.items():
        theirs = props.get(name)
        if theirs is None:
            problems.append(f"accepts '{name}', which PVE does not know")
            continue
        if theirs.get("type") != mine.type:
            problems.append(f"'{name}': type {mine.type}, PVE says {theirs.get('type')}")
        if bool(theirs.get("optional")) != mine.optional:
            problems.append(f"'{name}': optional={mine.optional}, PVE optional="
                            f"{bool(theirs.get('optional'))}")
        if mine.enum and theirs.get("enum") and not set(mine.enum) <= set(theirs["enum"]):
            problems.append(f"'{name}': enum {mine.enum} not within PVE's {theirs['enum']}")
    for name, theirs in props.items():
        if not theirs.get("optional") and name not in route.params:
            problems.append(f"PVE requires '{name}', the simulator does not accept it")
    return problems


def walk(route: Route, endpoint: Endpoint, handler: ApiHandler, sim: Simulator,
         values: Values, answers: list[Any] | None = None) -> tuple[list[str], int]:
    """Call the route with every parameter combination worth trying; return
    the problems found and how many calls answered 200 (their `data` go to
    `answers` when given)."""
    props: dict[str, Any] = dict(endpoint.parameters.get("properties") or {})
    base = values.path_params(route)
    for name, spec in route.params.items():
        if not spec.optional and name not in base:
            options = values.choices(route, name, props.get(name, {}))
            assert options, f"{route.template}: no value for required '{name}'"
            base[name] = options[0]
    if route.method == "POST" and route.template.endswith("/migrate"):
        # running guests: live migration (qemu), restart mode (lxc), as PVE needs
        base["restart" if "/lxc/" in route.template else "online"] = "1"
    variants = [dict(base)]
    if route.method == "GET":
        for name in route.params:
            if name in base:
                continue
            for value in values.choices(route, name, props.get(name, {})):
                variants.append(dict(base, **{name: value}))
    path = route.template
    problems: list[str] = []
    answered = 0
    for params in variants:
        concrete = path
        query = dict(params)
        for key in [p[1:-1] for p in route.parts if p.startswith("{")]:
            concrete = concrete.replace("{" + key + "}", query.pop(key))
        where = f"{route.method} {concrete} {query}"
        problems += [f"{where}: {p}" for p in check_params(endpoint, params)]
        resp = call(handler, sim, route.method, concrete, query)
        if resp.status != 200:
            problems.append(f"{where}: HTTP {resp.status} {resp.reason}")
            continue
        answered += 1
        data = json.loads(resp.body)["data"]
        if answers is not None:
            answers.append(data)
        allowed = KNOWN_EXTRAS.get((route.method, route.template))
        problems += [f"{where}: {p}" for p in check_response(endpoint, data, allowed)]
    return problems, answered


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.template}" for r in ROUTES])
def test_route_conforms_to_pve_schema(route: Route, schema: ApiSchema) -> None:
    endpoint = schema.get(route.method, route.template)
    assert endpoint is not None, f"{route.method} {route.template} is not a PVE 9.1 endpoint"
    problems = route_static_problems(route, endpoint)
    sim, upid = make_sim()
    values = Values(sim, upid)
    # an unknown parameter is refused like PVE refuses it
    probe = values.path_params(route)
    concrete = route.template
    for key, val in probe.items():
        concrete = concrete.replace("{" + key + "}", val)
    refused = call(sim, sim, route.method, concrete, {"no-such-param": "1"})
    body = json.loads(refused.body)
    if refused.status != 400 or "no-such-param" not in (body.get("errors") or {}):
        problems.append(f"unknown parameter: got {refused.status} {refused.reason} {body}")
    answers: list[Any] = []
    found, answered = walk(route, endpoint, sim, sim, values, answers)
    problems += found
    assert answered >= 1
    assert problems == []


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.template}" for r in ROUTES])
def test_route_returns_every_property_the_schema_lists(route: Route, schema: ApiSchema) -> None:
    """A client may read any property PVE documents: each one is served
    somewhere in the walk, or is in NOT_SERVED with the reason."""
    endpoint = schema.get(route.method, route.template)
    assert endpoint is not None
    sim, upid = make_sim()
    sim.advance(120)  # a pvestatd round after the walk's migration
    answers: list[Any] = []
    walk(route, endpoint, sim, sim, Values(sim, upid), answers)
    excused = NOT_SERVED.get((route.method, route.template), {})
    not_served = missing_properties(endpoint, answers)
    missing = [f"{loc}.{name}" for loc, name in not_served
               if f"{loc}.{name}" not in excused and f"{loc}.*" not in excused]
    assert missing == []
    named = {f"{loc}.{name}" for loc, name in not_served}
    stale = [k for k in excused if not k.endswith(".*") and k not in named]
    assert stale == [], "listed as not served but served: drop them from NOT_SERVED"


def test_every_endpoint_in_the_design_is_implemented() -> None:
    implemented = {(r.method, r.template) for r in ROUTES}
    wanted = {
        ("GET", "/version"), ("GET", "/cluster/status"), ("GET", "/cluster/resources"),
        ("GET", "/cluster/tasks"), ("GET", "/cluster/options"), ("GET", "/cluster/backup"),
        ("GET", "/cluster/ha/rules"), ("GET", "/cluster/ha/resources"),
        ("GET", "/cluster/ha/status/manager_status"), ("GET", "/cluster/ha/status/current"),
        ("GET", "/nodes"), ("GET", "/nodes/{node}/status"), ("GET", "/nodes/{node}/version"),
        ("GET", "/nodes/{node}/rrddata"), ("GET", "/nodes/{node}/qemu"),
        ("GET", "/nodes/{node}/lxc"), ("GET", "/nodes/{node}/qemu/{vmid}/status/current"),
        ("GET", "/nodes/{node}/qemu/{vmid}/config"), ("GET", "/nodes/{node}/qemu/{vmid}/rrddata"),
        ("GET", "/nodes/{node}/qemu/{vmid}/migrate"), ("POST", "/nodes/{node}/qemu/{vmid}/migrate"),
        ("POST", "/nodes/{node}/lxc/{vmid}/migrate"), ("GET", "/nodes/{node}/tasks"),
        ("GET", "/nodes/{node}/tasks/{upid}/status"), ("GET", "/access/permissions"),
        ("GET", "/pools"),
    }
    assert sorted(wanted - implemented) == []


class _Corrupt:
    """Wraps the Simulator and spoils one field of one endpoint's answer."""

    def __init__(self, sim: Simulator, path: str, spoil: Callable[[Any], None]) -> None:
        self.sim, self.path, self.spoil = sim, path, spoil

    def handle(self, request: ApiRequest) -> ApiResponse:
        resp = self.sim.handle(request)
        if request.path != self.path or resp.status != 200:
            return resp
        doc = json.loads(resp.body)
        self.spoil(doc["data"])
        return ApiResponse(resp.status, json.dumps(doc).encode(), resp.reason, resp.headers)


def _route(method: str, template: str) -> Route:
    return next(r for r in ROUTES if (r.method, r.template) == (method, template))


def test_the_walk_catches_a_wrong_type_and_an_unknown_field(schema: ApiSchema) -> None:
    sim, upid = make_sim()
    values = Values(sim, upid)
    route = _route("GET", "/nodes/{node}/tasks/{upid}/status")
    endpoint = schema.get(route.method, route.template)
    assert endpoint is not None
    clean, _ = walk(route, endpoint, sim, sim, values)
    assert clean == []

    def spoil(data: dict[str, Any]) -> None:
        data["pid"] = str(data["pid"])
        data["progress"] = 0.5

    task_path = f"/nodes/pve1/tasks/{upid}/status"
    found, answered = walk(route, endpoint, _Corrupt(sim, task_path, spoil), sim, values)
    assert answered == 1
    assert any("data.pid: expected integer, got str" in p for p in found)
    assert any("property 'progress' is not in the schema" in p for p in found)

    res_route = _route("GET", "/cluster/resources")
    res_endpoint = schema.get("GET", "/cluster/resources")
    assert res_endpoint is not None

    def drop_id(data: list[dict[str, Any]]) -> None:
        if data:  # type=storage / sdn: the simulated cluster has none
            data[0].pop("id")

    found, _ = walk(res_route, res_endpoint, _Corrupt(sim, "/cluster/resources", drop_id),
                    sim, values)
    assert any("required property 'id' missing" in p for p in found)
