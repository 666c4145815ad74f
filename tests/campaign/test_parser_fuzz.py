"""Property tests over every parser of PVE's answers (`pve_balancer.pve`).

An answer from the API is input we do not control: an older node, a
half-written reply, a proxy in between, a bug in PVE. Whatever JSON value
arrives, a parser either returns values inside their domain or raises the
`PveError` its caller handles (`ApiToken.parse`: `TokenError`, a
`ValueError`). Anything else would end a cycle as "cycle failed" with a
traceback, which the journal reserves for our own bugs.

JSON as Python's `json` reads it, which is what proxmoxer hands over. It
also accepts `1e999` (infinity), `NaN`/`Infinity` and integers of any size;
those hostile numbers have tests of their own (`test_hostile_numbers_*`),
so that the other properties hold on their own. Two strategies: arbitrary
JSON-like values,
and PVE-shaped objects (the keys each parser reads, each with an arbitrary
value), without which random dictionaries would rarely reach a parser's
inner branches.

The whole client path is fuzzed too: the real proxmoxer and requests code
of `PveClient` against an in-process answer whose body is generated, so
`sample`, `task_status`, `preconditions`, `major_version` and `migrate`
see what a hostile API could send.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pve_balancer import pve
from pve_balancer.model import AffinityRule, Guest, Node, Preconditions, Task
from pve_balancer.pve import ApiToken, PveClient, PveError, TokenError, connect
from pvesim.protocol import ApiRequest, ApiResponse
from pvesim.transport import attach

NOW = 1_767_225_600.0

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(-1e300, 1e300, allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["", "1", "0", "-1", "1.5e3", "running", "OK", "online",
                     "node", "qemu", "lxc", "maintenance", "UPID:pve1:1:2:3:qmigrate:101:u:",
                     "vm:101", "101", "pve1", "ha-auto-rebalance=1", "9.0.3", "yes"]),
)
numbers = st.one_of(
    st.integers(-10**12, 10**15),
    st.floats(-1e15, 1e15, allow_nan=False),
    st.integers(-10**12, 10**15).map(str),
    st.none(), st.booleans(), st.text(max_size=6),
)
"""Numbers as a sane PVE sends them (and the junk that is not a number)."""
hostile_numbers = st.sampled_from([math.inf, -math.inf, math.nan, 10**400, -(10**400),
                                   "nan", "inf", "1e999", "-1e999"])
"""What Python's json also reads: `1e999`, `NaN`, `Infinity`, a 400-digit integer."""

json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=25,
)


def shaped(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of `keys` (each a strategy), plus stray keys."""
    return st.fixed_dictionaries({}, optional={**keys, "x": json_values})


def any_of(*fixed: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(fixed), json_values)


def resource(num: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    NUM = st.one_of(num, json_values)  # noqa: N806 - reads as the key table below
    return shaped({
        "type": any_of("node", "qemu", "lxc", "storage"), "node": any_of("pve1", "pve2", ""),
        "status": any_of("online", "running", "stopped"), "maxmem": NUM,
        "maxcpu": NUM, "mem": NUM, "memhost": NUM, "cpu": NUM, "maxdisk": NUM,
        "vmid": NUM, "id": any_of("qemu/101", "lxc/7", "node/pve1"), "name": json_values,
        "tags": any_of("a;b", "nobalance", "a, b c"), "template": json_values,
        "lock": json_values, "hastate": any_of("started", "ignored", ""),
    })


RULE = shaped({
    "type": any_of("node-affinity", "resource-affinity"), "rule": json_values,
    "resources": any_of("vm:101,ct:102", "101, vm:x", ""), "nodes": any_of("pve1:2,pve2", ""),
    "affinity": any_of("negative", "positive"), "disable": json_values,
})
RESOURCE = resource(numbers)
TASK = shaped({
    "upid": any_of("UPID:pve1:1:2:3:qmigrate:101:u:", "UPID:x", ""), "status": json_values,
    "endtime": numbers | json_values, "starttime": numbers | json_values,
    "type": any_of("qmigrate", "vzdump"),
    "id": json_values, "node": json_values, "exitstatus": json_values,
})
BACKUP = shaped({
    "id": json_values, "schedule": any_of("sun 01:30", "daily", "*/5", "nonsense", ""),
    "enabled": json_values, "next-run": numbers | json_values, "starttime": any_of("01:30", ""),
    "dow": any_of("sun", "mon,tue", ""),
})
RRD = shaped({"time": st.one_of(st.floats(NOW - 900, NOW + 900), json_values),
              "cpu": json_values})
PRECONDITIONS = shaped({
    "local_disks": st.lists(st.one_of(shaped({"volid": json_values, "cdrom": json_values}),
                                      json_values), max_size=4) | json_values,
    "local_resources": st.lists(json_values, max_size=4) | json_values,
    "allowed_nodes": st.lists(json_values, max_size=4) | json_values,
    "not_allowed_nodes": st.dictionaries(st.text(max_size=6), json_values, max_size=3)
    | json_values,
})
MANAGER = shaped({
    "manager_status": shaped({"node_status": st.dictionaries(
        st.text(max_size=6), any_of("online", "maintenance"), max_size=3) | json_values}),
    "lrm_status": st.dictionaries(st.text(max_size=6), shaped({"mode": any_of("maintenance",
                                                                              "active")}),
                                  max_size=3) | json_values,
})


def lists_of(entry: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(st.one_of(entry, json_values), max_size=6), json_values)


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def check_tags(tags: frozenset[str]) -> None:
    assert all(t and not re.search(r"[;, ]", t) for t in tags), tags


def check_node(n: Node) -> None:
    assert isinstance(n.name, str) and n.name
    assert isinstance(n.maxmem, int) and isinstance(n.maxcpu, int) and isinstance(n.mem, int)
    assert finite(n.cpu), n
    if n.online:  # a node that is judged has a capacity
        assert n.maxmem > 0 and n.maxcpu > 0, n
        assert math.isfinite(n.mem_fraction)


def check_guest(g: Guest) -> None:
    assert isinstance(g.vmid, int) and g.vmid >= 0
    assert isinstance(g.node, str) and g.node
    assert isinstance(g.name, str) and g.name
    assert isinstance(g.mem, int) and isinstance(g.maxmem, int)
    assert finite(g.cpu) and finite(g.maxcpu), g
    check_tags(g.tags)


def check_task(t: Task) -> None:
    assert t.upid.startswith("UPID:")
    assert all(isinstance(v, str) for v in (t.node, t.kind, t.vmid))
    assert finite(t.starttime), t
    assert t.endtime is None or finite(t.endtime), t
    assert not (t.running and t.exitstatus is not None), t  # an ended task may lack one


# ------------------------------------------------------------ the parsers


@SETTINGS
@given(lists_of(RESOURCE))
def test_resources(data: Any) -> None:
    try:
        nodes, guests = pve.parse_resources(data)
    except PveError:
        assert not isinstance(data, list)
        return
    assert [n.name for n in nodes] == sorted(n.name for n in nodes)
    assert [g.vmid for g in guests] == sorted(g.vmid for g in guests)
    for n in nodes:
        check_node(n)
    for g in guests:
        check_guest(g)


@SETTINGS
@given(lists_of(RULE))
def test_rules(data: Any) -> None:
    try:
        rules = pve.parse_rules(data)
    except PveError:
        assert not isinstance(data, list)
        return
    for r in rules:
        assert isinstance(r, AffinityRule) and r.kind in ("node-affinity", "resource-affinity")
        assert all(isinstance(v, int) and v >= 0 for v in r.vmids)
        assert all(isinstance(n, str) and n and ":" not in n for n in r.nodes)
        assert isinstance(r.affinity, str) and r.affinity


@SETTINGS
@given(st.one_of(shaped({"crs": st.one_of(shaped({"ha-auto-rebalance": json_values}),
                                          any_of("ha=static,ha-auto-rebalance=1"))}),
                 json_values))
def test_auto_rebalance(data: Any) -> None:
    assert pve.parse_auto_rebalance(data) in (True, False)


@SETTINGS
@given(st.one_of(MANAGER, json_values))
def test_maintenance(data: Any) -> None:
    nodes = pve.parse_maintenance(data)
    assert isinstance(nodes, frozenset) and all(isinstance(n, str) for n in nodes)


@SETTINGS
@given(lists_of(TASK))
def test_tasks(data: Any) -> None:
    try:
        tasks = pve.parse_tasks(data)
    except PveError:
        assert not isinstance(data, list)
        return
    for t in tasks:
        check_task(t)


@SETTINGS
@given(st.text(max_size=80) | st.builds(lambda parts: ":".join(parts),
                                        st.lists(st.text(max_size=6), max_size=10)))
def test_upid(text: str) -> None:
    try:
        node, kind, vmid = pve.parse_upid(text)
    except PveError:
        assert not (text.startswith("UPID:") and text.count(":") >= 7)
        return
    assert all(isinstance(v, str) for v in (node, kind, vmid))


@SETTINGS
@given(lists_of(BACKUP), st.floats(NOW - 10**6, NOW + 10**6))
def test_backup_jobs_and_the_next_start(data: Any, now: float) -> None:
    try:
        jobs = pve.parse_backup_jobs(data)
    except PveError:
        assert not isinstance(data, list)
        return
    starts = pve.next_backup_start(jobs, now)
    if not jobs:
        assert starts is None
    else:
        # a time that cannot be known holds the guard (0.0), never NaN
        assert starts is not None and not math.isnan(starts) and starts >= 0.0


@SETTINGS
@given(lists_of(RRD), st.floats(NOW - 100, NOW + 100))
def test_rrd_cpu(data: Any, now: float) -> None:
    try:
        points = pve.parse_rrd_cpu(data, now)
    except PveError:
        assert not isinstance(data, list)
        return
    assert points == sorted(points)
    for t, cpu in points:
        assert math.isfinite(t) and math.isfinite(cpu)
        assert abs(now - t) <= pve.RRD_MAX_AGE + pve.RRD_WINDOW


@SETTINGS
@given(st.integers(0, 10**6), st.one_of(PRECONDITIONS, json_values))
def test_preconditions(vmid: int, data: Any) -> None:
    try:
        p = pve.parse_preconditions(vmid, data)
    except PveError:
        assert not isinstance(data, dict)
        return
    assert isinstance(p, Preconditions) and p.vmid == vmid
    assert all(isinstance(d, str) for d in p.local_disks)
    if isinstance(data.get("local_disks"), list) and any(
            not isinstance(d, dict) for d in data["local_disks"]):
        assert p.unmovable is not None  # an entry it cannot read still holds the guest back
    assert all(isinstance(r, str) and r for r in p.local_resources)
    assert p.allowed_nodes is None or all(isinstance(n, str) for n in p.allowed_nodes)
    assert all(isinstance(n, str) for n in p.not_allowed)
    assert p.unmovable is None or isinstance(p.unmovable, str)


@SETTINGS
@given(st.one_of(shaped({"release": any_of("9.0", "8", "x9", "99999999999999999999"),
                         "version": any_of("9.0.3", "")}), json_values))
def test_major_version(data: Any) -> None:
    try:
        major = pve.parse_major_version(data)
    except PveError:
        return
    assert isinstance(major, int) and major >= 0


@SETTINGS
@given(json_values)
def test_tags(value: Any) -> None:
    check_tags(pve.parse_tags(value))


SECRET = "5e3f0c1a-6b7d-4e2f-9a8b-0c1d2e3f4a5b"


@SETTINGS
@given(st.text(max_size=60), st.sampled_from(["", "=", f"={SECRET}", SECRET]))
def test_token_line_errors_never_show_the_secret(head: str, tail: str) -> None:
    line = head + tail
    try:
        token = ApiToken.parse(line)
    except TokenError as exc:  # the documented ValueError
        assert isinstance(exc, ValueError)
        if SECRET in line and SECRET not in head:
            assert SECRET not in str(exc)
        return
    assert token.secret and token.secret not in repr(token) and token.secret not in str(token)


# ------------------------------------------------- the client, end to end


class Answers:
    """An API whose every answer is the next generated body; records paths."""

    def __init__(self, bodies: dict[str, bytes], default: bytes) -> None:
        self.bodies = bodies
        self.default = default

    def handle(self, request: ApiRequest) -> ApiResponse:
        for prefix, body in self.bodies.items():
            if request.path.startswith(prefix):
                return ApiResponse(200, body)
        return ApiResponse(200, self.default)


def body_of(value: Any, raw: bool) -> bytes:
    """`{"data": value}` as PVE would send it, or (raw) the value itself
    as the whole body: not PVE's envelope at all."""
    doc = value if raw else {"data": value}
    try:
        return json.dumps(doc).encode()
    except (ValueError, TypeError):  # e.g. a NaN key: send the text PVE could send
        return b'{"data": null}'


def client_for(handler: Answers) -> PveClient:
    token = ApiToken.parse(f"pve-balancer@pve!agent={SECRET}")
    client = connect("https://localhost:8006", token, verify=True)
    attach(client.api, handler, "pve1", sleep=lambda s: None, reachable=lambda n: True)
    return client


bodies = st.tuples(json_values, st.booleans()).map(lambda vr: body_of(*vr))
bodies_or_junk = st.one_of(bodies, st.binary(max_size=40),
                           st.sampled_from([b"", b"{", b'{"data": [1,}', b"null",
                                            b'{"data": 1e999}', b'{"data": [NaN]}']))


@SETTINGS
@given(st.fixed_dictionaries({
    "/cluster/resources": st.one_of(lists_of(RESOURCE).map(lambda v: body_of(v, False)),
                                    bodies_or_junk),
    "/cluster/tasks": st.one_of(lists_of(TASK).map(lambda v: body_of(v, False)),
                                bodies_or_junk),
    "/cluster/ha/rules": bodies_or_junk,
    "/cluster/options": bodies_or_junk,
    "/cluster/backup": st.one_of(lists_of(BACKUP).map(lambda v: body_of(v, False)),
                                 bodies_or_junk),
    "/cluster/ha/status": bodies_or_junk,
}))
def test_client_sample_against_any_answer(answers: dict[str, bytes]) -> None:
    client = client_for(Answers(answers, b'{"data": null}'))
    try:
        snapshot, tasks = client.sample(NOW)
    except PveError:
        return
    for n in snapshot.nodes:
        check_node(n)
    for g in snapshot.guests:
        check_guest(g)
    for t in tasks:
        check_task(t)
    assert snapshot.next_backup_in is None or snapshot.next_backup_in >= 0.0


UPID = "UPID:pve1:0000A1B2:00C0FFEE:6955B982:qmigrate:101:pve-balancer@pve!agent:"


@SETTINGS
@given(bodies_or_junk, bodies_or_junk, bodies_or_junk, bodies_or_junk)
def test_client_one_off_calls_against_any_answer(status: bytes, precond: bytes,
                                                 version: bytes, post: bytes) -> None:
    client = client_for(Answers({"/nodes/pve1/tasks/": status, "/version": version},
                                precond))
    try:
        task = client.task_status(UPID)
        check_task(task)
    except PveError:
        pass
    try:
        p = client.preconditions("pve1", 101, "pve2")
        assert p.vmid == 101
    except PveError:
        pass
    with contextlib.suppress(PveError):
        assert client.major_version() >= 0
    poster = client_for(Answers({"/version": version}, post))
    try:
        upid = poster.migrate("pve1", 101, "pve2")
        assert upid.startswith("UPID:")
    except PveError:
        pass


@pytest.mark.parametrize("body", [b'{"data": 1e999}', b'{"data": "UPID:"}',
                                  b'{"data": {"status": "stopped", "exitstatus": 1e999}}'])
def test_fixed_hostile_answers_to_task_status(body: bytes) -> None:
    """Examples kept from the search: whatever the status, PveError or a task."""
    client = client_for(Answers({}, body))
    with contextlib.suppress(PveError):
        check_task(client.task_status(UPID))


# ------------------------------------------------ numbers JSON can also carry

INF = math.inf
NODE = {"type": "node", "node": "pve1", "status": "online", "maxmem": 64 << 30, "maxcpu": 16,
        "mem": 1 << 30, "cpu": 0.1}
GUEST = {"type": "qemu", "node": "pve1", "vmid": 101, "status": "running", "mem": 1 << 30,
         "maxmem": 2 << 30, "cpu": 0.1, "maxcpu": 2}
TASK_OK = {"upid": "UPID:pve1:1:2:3:qmigrate:101:u:", "type": "qmigrate", "starttime": NOW,
           "endtime": NOW + 10, "status": "OK"}


def _resources(data: Any) -> None:
    nodes, guests = pve.parse_resources(data)
    for n in nodes:
        check_node(n)
    for g in guests:
        check_guest(g)


def _tasks(data: Any) -> None:
    for t in pve.parse_tasks(data):
        check_task(t)


def _backup(data: Any) -> None:
    starts = pve.next_backup_start(pve.parse_backup_jobs(data), NOW)
    assert starts is None or not math.isnan(starts)


def _rrd(data: Any) -> None:
    for t, cpu in pve.parse_rrd_cpu(data, NOW):
        assert math.isfinite(t) and math.isfinite(cpu)


HOSTILE = {
    "resources: node maxmem 1e999": (_resources, [{**NODE, "maxmem": INF}]),
    "resources: node maxcpu of 400 digits": (_resources, [{**NODE, "maxcpu": 10**400}]),
    "resources: node cpu 1e999": (_resources, [{**NODE, "cpu": INF}]),
    "resources: guest vmid 'nan'": (_resources, [{**GUEST, "vmid": "nan"}]),
    "resources: guest mem 1e999 as text": (_resources, [{**GUEST, "mem": "1e999"}]),
    "tasks: starttime of 400 digits": (_tasks, [{**TASK_OK, "starttime": 10**400}]),
    "tasks: endtime 1e999": (_tasks, [{**TASK_OK, "endtime": INF}]),
    "backup: next-run of 400 digits": (_backup, [{"id": "b", "schedule": "daily",
                                                  "next-run": 10**400}]),
    "rrd: time of 400 digits": (_rrd, [{"time": 10**400, "cpu": 0.5}]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_numbers_are_a_pve_error_or_a_finite_value(case: str) -> None:
    check, data = HOSTILE[case]
    with contextlib.suppress(PveError):
        check(data)


def test_hostile_numbers_through_the_client_are_a_pve_error() -> None:
    body = b'{"data": [{"type": "node", "node": "pve1", "status": "online", ' \
           b'"maxmem": 1e999, "maxcpu": 16}]}'
    client = client_for(Answers({"/cluster/resources": body}, b'{"data": []}'))
    try:
        nodes = client.sample(NOW)[0].nodes
    except PveError:
        return
    for n in nodes:
        check_node(n)
