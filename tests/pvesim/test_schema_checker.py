"""The schema checker itself: it must accept PVE-shaped data and name every
kind of deviation (so a passing conformance test means something)."""

from __future__ import annotations

import pytest

from tests.pvesim.schema_check import ApiSchema, check_params, check_response


@pytest.fixture(scope="module")
def schema() -> ApiSchema:
    return ApiSchema.load()


def test_schema_is_indexed_and_paths_match_templates(schema: ApiSchema) -> None:
    assert len(schema.endpoints) > 500
    ep = schema.match("GET", "/nodes/pve1/qemu/100/status/current")
    assert ep is not None and ep.template == "/nodes/{node}/qemu/{vmid}/status/current"
    ep = schema.match("GET", "/cluster/ha/status/manager_status")
    assert ep is not None and ep.template == "/cluster/ha/status/manager_status"
    assert schema.match("GET", "/no/such/thing") is None
    assert schema.match("PATCH", "/version") is None


def test_task_status_that_conforms(schema: ApiSchema) -> None:
    ep = schema.get("GET", "/nodes/{node}/tasks/{upid}/status")
    assert ep is not None
    good = {"upid": "UPID:pve1:1:2:3:qmigrate:100:root@pam:", "node": "pve1", "pid": 1,
            "pstart": 2, "starttime": 3, "type": "qmigrate", "id": "100",
            "user": "root@pam", "status": "stopped", "exitstatus": "OK"}
    assert check_response(ep, good) == []


def test_wrong_type_unknown_field_missing_field_and_enum_are_reported(
    schema: ApiSchema,
) -> None:
    ep = schema.get("GET", "/nodes/{node}/tasks/{upid}/status")
    assert ep is not None
    bad = {"upid": "U", "node": "pve1", "pid": "1", "pstart": 2, "starttime": 3,
           "type": "qmigrate", "id": "100", "status": "done", "colour": "red"}
    problems = check_response(ep, bad)
    assert "data.pid: expected integer, got str '1'" in problems
    assert "data: required property 'user' missing" in problems
    assert "data.status: 'done' not in enum ['running', 'stopped']" in problems
    assert "data: property 'colour' is not in the schema" in problems
    assert len(problems) == 4


def test_arrays_of_objects_and_pve_booleans(schema: ApiSchema) -> None:
    ep = schema.get("GET", "/cluster/resources")
    assert ep is not None
    item = {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve1",
            "template": 0, "cpu": 0.25, "maxcpu": 4}
    assert check_response(ep, [item]) == []
    assert check_response(ep, [dict(item, template=2)]) == [
        "data[0].template: expected boolean (0/1), got int 2"]
    assert check_response(ep, [dict(item, cpu="25%")]) == [
        "data[0].cpu: expected number, got str '25%'"]
    assert check_response(ep, {"id": "x"}) == ["data: expected array, got dict"]


def test_parameters_checked_by_name_type_and_enum(schema: ApiSchema) -> None:
    ep = schema.get("POST", "/nodes/{node}/qemu/{vmid}/migrate")
    assert ep is not None
    ok = {"node": "pve1", "vmid": "100", "target": "pve2", "online": "1"}
    assert check_params(ep, ok) == []
    problems = check_params(ep, dict(ok, online="maybe", bwlimit="-5", speed="9"))
    assert "parameter 'online': 'maybe' is not a boolean" in problems
    assert "parameter 'bwlimit': -5 below minimum 0" in problems
    assert any(p.startswith("parameter 'speed': not in the schema") for p in problems)
    res = schema.get("GET", "/cluster/resources")
    assert res is not None
    assert check_params(res, {"type": "disk"}) == [
        "parameter 'type': 'disk' not in enum ['vm', 'storage', 'node', 'sdn']"]


def test_property_families_explicit_extras_and_closed_objects(schema: ApiSchema) -> None:
    from tests.pvesim.schema_check import check_value

    config = schema.get("GET", "/nodes/{node}/qemu/{vmid}/config")
    assert config is not None
    good = {"digest": "ab", "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"}
    assert check_response(config, good) == []
    assert check_response(config, dict(good, net1=5)) == [
        "data.net1: expected string, got int 5"]
    tasks = schema.get("GET", "/cluster/tasks")
    assert tasks is not None
    item = [{"upid": "UPID:x", "endtime": 5}]
    assert check_response(tasks, item) == ["data[0]: property 'endtime' is not in the schema"]
    assert check_response(tasks, item, {"data[]": frozenset({"endtime"})}) == []
    closed = {"type": "object", "additionalProperties": 0, "properties": {"a": {"type": "integer"}}}
    assert check_value({"a": 1, "b": 2}, closed, "data", {"data": frozenset({"b"})}) == [
        "data: property 'b' is not allowed (additionalProperties 0)"]
    open_ = {"type": "object", "additionalProperties": 1, "properties": {"a": {"type": "integer"}}}
    assert check_value({"a": 1, "b": 2}, open_) == []


def test_properties_the_schema_lists_but_no_answer_carries(schema: ApiSchema) -> None:
    from tests.pvesim.schema_check import missing_properties

    pools = schema.get("GET", "/pools")
    assert pools is not None
    # members is listed but absent: reported; its own properties are not,
    # since no member object was returned at all
    assert missing_properties(pools, [[{"poolid": "a"}]]) == [
        ("data[]", "comment"), ("data[]", "members")]
    one = {"poolid": "a", "comment": "x", "members": [{"id": "qemu/100", "node": "pve1",
                                                       "type": "qemu"}]}
    # seen across answers: one answer has the comment, another the members
    assert missing_properties(pools, [[{"poolid": "a", "comment": "x"}], [one]]) == [
        ("data[].members[]", "storage"), ("data[].members[]", "vmid")]
