"""API semantics through Simulator.handle (in-process, no wire)."""

from __future__ import annotations

import re

from tests.pvesim.simhelp import ADMIN, AGENT, AUDIT, call, data, from_dict, named

UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9-]+):(?P<pid>[0-9A-F]{8}):(?P<pstart>[0-9A-F]{8}):"
    r"(?P<start>[0-9A-F]{8}):(?P<type>[a-z]+):(?P<id>[^:]*):(?P<user>[^:]+):$"
)


def test_auth_401_without_or_with_wrong_token() -> None:
    sim = named("balanced-3node")
    status, reason, body = call(sim, "GET", "/cluster/resources", token=None)
    assert (status, body) == (401, {"data": None})
    status, reason, body = call(sim, "GET", "/cluster/resources", secret="wrong")
    assert (status, reason, body) == (401, "authentication failure", {"data": None})
    assert sim.request_log[-1].status == 401


def test_403_names_path_and_privilege() -> None:
    sim = named("balanced-3node")
    status, reason, body = call(
        sim, "POST", "/nodes/pve1/qemu/101/migrate", {"target": "pve2", "online": "1"}, token=AUDIT
    )
    assert status == 403
    assert reason == "Permission check failed (/vms/101, VM.Migrate)"
    assert body == {"data": None}
    assert sim.guests[101].lock is None


def test_resources_filtered_by_token_acl() -> None:
    d = {
        "nodes": [{"name": "pve1"}, {"name": "pve2"}],
        "guests": [{"vmid": 100, "node": "pve1"}, {"vmid": 200, "node": "pve2"}],
        "tokens": [
            {"id": "ops@pve!limited", "secret": "s1", "acl": {"/vms/100": ["VM.Audit"]}},
            {"id": "root@pam!admin", "secret": "s2", "privileges": ["Sys.Audit", "VM.Audit"]},
        ],
    }
    sim = from_dict(d)
    ids = [r["id"] for r in data(sim, "GET", "/cluster/resources", token="ops@pve!limited")]
    assert ids == ["qemu/100"]
    ids = {r["id"] for r in data(sim, "GET", "/cluster/resources", token=ADMIN)}
    assert {"qemu/100", "qemu/200", "node/pve1", "node/pve2"} <= ids
    perms = data(sim, "GET", "/access/permissions", token="ops@pve!limited")
    assert perms == {"/vms/100": {"VM.Audit": 1}}


def test_resource_fields_and_type_filter() -> None:
    sim = named("local-disk-guest")
    sim.advance(30)
    nodes = data(sim, "GET", "/cluster/resources", params={"type": "node"})
    assert {n["type"] for n in nodes} == {"node"}
    vms = {r["vmid"]: r for r in data(sim, "GET", "/cluster/resources", params={"type": "vm"})}
    assert vms[103]["type"] == "lxc" and vms[101]["type"] == "qemu"
    assert vms[105]["template"] == 1 and vms[101]["template"] == 0
    assert vms[104]["lock"] == "backup"
    assert vms[106]["tags"] == "web;prod"
    assert vms[101]["memhost"] >= vms[101]["mem"] > 0
    assert 0 < vms[101]["cpu"] <= 1
    status, _, body = call(sim, "GET", "/cluster/resources", {"type": "bogus"})
    assert status == 400 and "type" in body["errors"]


def test_upid_format_and_task_lifecycle() -> None:
    sim = named("balanced-3node")
    sim.advance(20)
    upid = data(
        sim, "POST", "/nodes/pve1/qemu/101/migrate", params={"target": "pve2", "online": "1"}
    )
    m = UPID_RE.match(upid)
    assert m, upid
    assert m["node"] == "pve1" and m["type"] == "qmigrate" and m["id"] == "101"
    assert m["user"] == AGENT
    assert int(m["start"], 16) == int(sim.now)
    st = data(sim, "GET", f"/nodes/pve1/tasks/{upid}/status")
    assert st["status"] == "running" and "exitstatus" not in st
    listed = data(sim, "GET", "/cluster/tasks")
    assert listed[0]["upid"] == upid and "status" not in listed[0]
    res = {r["id"]: r for r in data(sim, "GET", "/cluster/resources")}
    assert res["qemu/101"]["lock"] == "migrate"
    sim.advance(30)
    st = data(sim, "GET", f"/nodes/pve1/tasks/{upid}/status")
    assert (st["status"], st["exitstatus"]) == ("stopped", "OK")
    listed = data(sim, "GET", "/cluster/tasks")
    assert listed[0]["status"] == "OK" and listed[0]["endtime"] >= listed[0]["starttime"]
    res = {r["id"]: r for r in data(sim, "GET", "/cluster/resources")}
    assert res["qemu/101"]["node"] == "pve2" and "lock" not in res["qemu/101"]
    node_tasks = data(sim, "GET", "/nodes/pve1/tasks")
    assert [t["upid"] for t in node_tasks] == [upid]


def test_ha_guest_gets_hamigrate_then_qmigrate() -> None:
    sim = named("ha-guest")
    sim.advance(20)
    upid = data(
        sim, "POST", "/nodes/pve2/qemu/102/migrate", params={"target": "pve3", "online": "1"}
    )
    assert UPID_RE.match(upid)["type"] == "hamigrate"  # type: ignore[index]
    st = data(sim, "GET", f"/nodes/pve2/tasks/{upid}/status")
    assert (st["status"], st["exitstatus"]) == ("stopped", "OK")
    res = {r["id"]: r for r in data(sim, "GET", "/cluster/resources")}
    assert res["qemu/102"]["node"] == "pve2" and res["qemu/102"]["hastate"] == "migrate"
    sim.advance(sim.params.ha_delay + 0.5)
    running = [t for t in data(sim, "GET", "/cluster/tasks") if "status" not in t]
    assert [(t["type"], t["id"], t["user"]) for t in running] == [("qmigrate", "102", "root@pam")]
    sim.advance(30)
    assert sim.guests[102].node == "pve3"
    res = {r["id"]: r for r in data(sim, "GET", "/cluster/resources")}
    assert res["qemu/102"]["hastate"] == "started"


def test_migration_preconditions_and_refusals() -> None:
    sim = named("local-disk-guest")
    sim.advance(10)
    pre = data(sim, "GET", "/nodes/pve1/qemu/101/migrate")
    assert pre["local_disks"][0]["volid"] == "local-lvm:vm-101-disk-1"
    assert pre["allowed_nodes"] == ["pve2", "pve3"] and pre["running"] == 1
    assert data(sim, "GET", "/nodes/pve1/qemu/102/migrate")["local_resources"] == ["hostpci0"]

    def refuse(vmid: int, params: dict[str, str], kind: str = "qemu") -> str:
        status, reason, body = call(sim, "POST", f"/nodes/pve1/{kind}/{vmid}/migrate", params)
        assert status == 500 and body == {"data": None}, (status, reason)
        return reason

    online = {"target": "pve2", "online": "1"}
    assert refuse(101, online).startswith("can't migrate local disk 'local-lvm:vm-101-disk-1'")
    assert refuse(102, online) == "can't migrate VM which uses local devices: hostpci0"
    assert refuse(104, online) == "VM is locked (backup)"
    status, _, body = call(
        sim, "POST", "/nodes/pve1/qemu/106/migrate", {"target": "pve1", "online": "1"}
    )
    assert (status, body["errors"]) == (400, {"target": "target is local node."})
    assert refuse(106, {"target": "pve2"}) == "can't migrate running VM without --online"
    assert refuse(103, online, "lxc") == "lxc live migration is currently not implemented"
    status, _, _ = call(sim, "POST", "/nodes/pve1/qemu/106/migrate", {"online": "1"})
    assert status == 400
    sim.power_off("pve2")
    assert refuse(106, online) == "target node 'pve2' is not online"
    assert sim.migrations == {}


def test_unreachable_node_answers_596_through_another_node() -> None:
    sim = named("balanced-3node")
    sim.advance(20)
    sim.cut_network("pve3")
    status, _, body = call(sim, "GET", "/nodes/pve3/status", served_by="pve1")
    assert status == 596 and body == {"data": None}
    nodes = {n["node"]: n for n in data(sim, "GET", "/cluster/resources", params={"type": "node"})}
    assert nodes["pve3"]["status"] == "offline"
    vms = {r["vmid"]: r for r in data(sim, "GET", "/cluster/resources", params={"type": "vm"})}
    assert vms[301]["status"] == "unknown"
    # pve3 itself still answers about itself, but has no quorum for writes
    assert data(sim, "GET", "/nodes/pve3/status", served_by="pve3")["cpu"] >= 0
    status, reason, _ = call(
        sim,
        "POST",
        "/nodes/pve3/qemu/301/migrate",
        {"target": "pve1", "online": "1"},
        served_by="pve3",
    )
    assert (status, reason) == (500, "cluster not ready - no quorum?")
    sim.restore_network("pve3")
    assert call(sim, "GET", "/nodes/pve3/status")[0] == 200


def test_unknown_path_is_501_and_bad_params_400() -> None:
    sim = named("balanced-3node")
    status, reason, body = call(sim, "GET", "/nodes/pve1/frobnicate")
    assert (status, reason, body) == (
        501,
        "Method 'GET /nodes/pve1/frobnicate' not implemented",
        {"data": None},
    )
    status, reason, body = call(sim, "GET", "/nodes/pve1/rrddata")
    assert status == 400 and reason == "Parameter verification failed."
    assert body["errors"] == {"timeframe": "property is missing and it is not optional"}
    # authentication comes first, as in pveproxy
    assert call(sim, "GET", "/nodes/pve1/frobnicate", token=None)[0] == 401


def test_rrddata_has_minute_history_from_the_start() -> None:
    sim = named("balanced-3node")
    rows = data(sim, "GET", "/nodes/pve1/rrddata", params={"timeframe": "hour", "cf": "AVERAGE"})
    assert len(rows) == 70
    assert all(rows[i + 1]["time"] - rows[i]["time"] == 60 for i in range(69))
    filled = [r for r in rows if "cpu" in r]
    assert len(filled) >= 60
    assert abs(filled[-1]["cpu"] - 5 / 16 - 0.1 / 16) < 0.02
    vm = data(sim, "GET", "/nodes/pve1/qemu/101/rrddata", params={"timeframe": "hour"})
    assert {"time", "cpu", "maxcpu", "mem", "maxmem"} <= set(vm[-1])


def test_ha_views_maintenance_rules_options() -> None:
    sim = named("ha-guest")
    sim.set_maintenance("pve2", True)
    ms = data(sim, "GET", "/cluster/ha/status/manager_status")
    assert ms["manager_status"]["node_status"]["pve2"] == "maintenance"
    assert ms["manager_status"]["node_status"]["pve1"] == "online"
    rules = {r["rule"]: r for r in data(sim, "GET", "/cluster/ha/rules")}
    assert rules["db-apart"]["affinity"] == "negative"
    assert rules["db-apart"]["resources"] == "vm:101,vm:102"
    assert rules["cache-on-pve3"]["nodes"] == "pve3:2,pve1"
    assert rules["old-rule"]["disable"] == 1
    assert data(sim, "GET", "/cluster/options")["crs"]["ha-auto-rebalance"] == 0
    sids = [r["sid"] for r in data(sim, "GET", "/cluster/ha/resources")]
    assert sids == ["vm:101", "vm:102", "vm:103"]
    status, _, _ = call(sim, "GET", "/cluster/ha/rules", token="root@pam!admin")
    assert status == 200


def test_backup_job_listing_and_vzdump_task_locks_guests() -> None:
    sim = named("foreign-migration")
    jobs = data(sim, "GET", "/cluster/backup")
    assert jobs[0]["id"] == "backup-daily" and jobs[0]["enabled"] == 1
    assert jobs[0]["next-run"] > sim.now
    sim.advance(601)
    running = [t for t in data(sim, "GET", "/cluster/tasks") if "status" not in t]
    assert any(t["type"] == "vzdump" and t["node"] == "pve3" for t in running)
    assert [g.vmid for g in sim.guests.values() if g.lock == "backup"] == [201]
    sim.advance(30)
    assert [g.vmid for g in sim.guests.values() if g.lock == "backup"] == [301]
    sim.advance(60)
    assert [g for g in sim.guests.values() if g.lock] == []
    vzdump = [t for t in data(sim, "GET", "/cluster/tasks") if t["type"] == "vzdump"]
    assert vzdump[0]["status"] == "OK"


def test_request_log_records_every_call() -> None:
    sim = named("balanced-3node")
    call(sim, "GET", "/version")
    call(sim, "GET", "/cluster/resources", token=None)
    log = [(r.method, r.path, r.status, r.token_id) for r in sim.request_log]
    assert log == [("GET", "/version", 200, AGENT), ("GET", "/cluster/resources", 401, None)]
    api = sim.metrics.to_dict()["api_requests"]
    assert api["by_path"] == {"GET /version": 1, "GET /cluster/resources": 1}
