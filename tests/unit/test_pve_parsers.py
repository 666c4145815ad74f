"""The defaulting parsers of pve.py against PVE-shaped JSON (field names and
types as the PVE 9.1 API schema declares them)."""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

import pytest

from pve_balancer import pve
from pve_balancer.calendar import ScheduleError, next_start, parse_schedule
from pve_balancer.pve import ApiToken, BackupJob, PveError, TokenError
from tests.shared_data import PVE_API_SCHEMA

SCHEMA = PVE_API_SCHEMA
GIB = 1 << 30

RESOURCES = [
    {"id": "node/pve1", "type": "node", "node": "pve1", "status": "online", "cpu": 0.42,
     "maxcpu": 32, "mem": 100 * GIB, "maxmem": 256 * GIB, "disk": 5 * GIB,
     "maxdisk": 100 * GIB, "uptime": 86400, "level": "", "cgroup-mode": 2},
    {"id": "node/pve2", "type": "node", "node": "pve2", "status": "offline"},
    {"id": "storage/pve1/local", "type": "storage", "node": "pve1", "storage": "local",
     "status": "available", "plugintype": "dir", "shared": 0},
    {"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "pve1", "name": "web1",
     "status": "running", "cpu": 0.5, "maxcpu": 4, "mem": 3 * GIB, "memhost": 4 * GIB,
     "maxmem": 8 * GIB, "tags": "prod;pve-balancer-exclude", "hastate": "started",
     "template": 0, "uptime": 100, "netin": 1, "netout": 2, "diskread": 3, "diskwrite": 4},
    {"id": "qemu/102", "type": "qemu", "vmid": 102, "node": "pve1", "name": "db1",
     "status": "running", "cpu": 0.1, "maxcpu": 2, "maxmem": 4 * GIB, "lock": "backup"},
    {"id": "qemu/9000", "type": "qemu", "vmid": 9000, "node": "pve2", "name": "tmpl",
     "status": "stopped", "template": 1, "maxcpu": 1, "maxmem": GIB},
    {"id": "lxc/200", "type": "lxc", "vmid": 200, "node": "pve1", "name": "ct",
     "status": "running", "cpu": 0.01, "maxcpu": 1, "mem": GIB // 4, "maxmem": GIB,
     "hastate": "ignored"},
    {"id": "qemu/bad", "type": "qemu", "name": "no-vmid-no-node"},
    "garbage",
    {"id": "pool/p1", "type": "pool", "pool": "p1"},
]


def test_resources_parse_nodes_guests_and_tolerate_gaps(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        nodes, guests = pve.parse_resources(RESOURCES)
    assert [n.name for n in nodes] == ["pve1", "pve2"]
    pve1, pve2 = nodes
    assert pve1.online and pve1.maxcpu == 32 and pve1.mem == 100 * GIB
    assert not pve2.online and pve2.maxmem == 0
    by_id = {g.vmid: g for g in guests}
    assert sorted(by_id) == [101, 102, 200, 9000]
    web = by_id[101]
    assert web.mem == 4 * GIB, "memhost (host-side usage) is preferred over mem"
    assert web.tags == frozenset({"prod", "pve-balancer-exclude"})
    assert web.ha_managed and web.kind == "qemu" and web.maxcpu == 4.0
    assert by_id[102].mem == 0 and by_id[102].lock == "backup", "missing mem is not a crash"
    assert by_id[9000].template and by_id[9000].status == "stopped"
    assert by_id[200].kind == "lxc" and not by_id[200].ha_managed, "hastate ignored = not HA"
    assert "without vmid or node skipped" in caplog.text
    assert "not an object" in caplog.text


def test_resources_that_are_not_a_list_raise_a_named_error() -> None:
    with pytest.raises(PveError, match="/cluster/resources: expected a list"):
        pve.parse_resources({"errors": b"<html>"})


def test_online_node_without_capacity_is_treated_offline() -> None:
    nodes, _ = pve.parse_resources([{"type": "node", "node": "x", "status": "online",
                                     "cpu": "0.5", "mem": 1}])
    assert not nodes[0].online
    assert nodes[0].cpu == 0.5, "numeric strings are read"


def test_tasks_running_detection_and_migration_kinds() -> None:
    tasks = pve.parse_tasks([
        {"upid": "UPID:pve1:0000A1B2:0012F00D:6745A0F0:qmigrate:101:root@pam:",
         "node": "pve1", "type": "qmigrate", "id": "101", "user": "root@pam",
         "starttime": 1732600048},
        {"upid": "UPID:pve2:0000A1B3:0012F00E:6745A0F1:vzdump::root@pam:", "node": "pve2",
         "type": "vzdump", "id": "", "starttime": 1732600049, "endtime": 1732600100,
         "status": "OK"},
        {"upid": "UPID:pve2:0000A1B4:0012F00F:6745A0F2:hamigrate:102:root@pam:",
         "type": "hamigrate", "id": "102", "status": "migration aborted", "endtime": 5},
        {"upid": "not-a-upid"},
    ])
    assert [(t.kind, t.vmid, t.running) for t in tasks] == [
        ("qmigrate", "101", True), ("vzdump", "", False), ("hamigrate", "102", False)]
    assert tasks[1].exitstatus == "OK" and tasks[2].exitstatus == "migration aborted"


def test_upid_fields() -> None:
    assert pve.parse_upid("UPID:pve3:00001234:00ABCDEF:6745A0F0:qmigrate:105:x@pve!t:") == (
        "pve3", "qmigrate", "105")
    with pytest.raises(PveError, match="not a UPID"):
        pve.parse_upid("UPID:short")


def test_rules_parse_resources_nodes_and_disable() -> None:
    rules = pve.parse_rules([
        {"rule": "keep-apart", "type": "resource-affinity", "affinity": "negative",
         "resources": "vm:101,vm:102", "digest": "abc"},
        {"rule": "pin", "type": "node-affinity", "resources": "vm:103,ct:200",
         "nodes": "pve1:2,pve2", "strict": 1, "disable": 1},
        {"rule": "weird", "type": "future-kind", "resources": "vm:1"},
    ])
    assert len(rules) == 2
    apart, pin = rules
    assert apart.vmids == frozenset({101, 102}) and apart.affinity == "negative"
    assert apart.enabled
    assert pin.nodes == frozenset({"pve1", "pve2"}) and pin.vmids == frozenset({103, 200})
    assert not pin.enabled


@pytest.mark.parametrize(("options", "expected"), [
    ({"crs": {"ha": "static", "ha-auto-rebalance": 1}}, True),
    ({"crs": "ha=dynamic,ha-auto-rebalance=1"}, True),
    ({"crs": "ha=static,ha-rebalance-on-start=1"}, False),
    ({"keyboard": "en-us"}, False),
    ([], False),
])
def test_auto_rebalance_detection(options: object, expected: bool) -> None:
    assert pve.parse_auto_rebalance(options) is expected


def test_maintenance_from_manager_status() -> None:
    status = {"manager_status": {"master_node": "pve1",
                                 "node_status": {"pve1": "online", "pve2": "maintenance"}},
              "lrm_status": {"pve3": {"mode": "maintenance", "state": "wait_for_agent_lock"},
                             "pve1": {"mode": "active"}},
              "quorum": {"node": "pve1", "quorate": "1"}}
    assert pve.parse_maintenance(status) == frozenset({"pve2", "pve3"})
    assert pve.parse_maintenance({}) == frozenset()


def test_backup_jobs_prefer_pve_next_run_then_schedule() -> None:
    now = time.time()
    jobs = pve.parse_backup_jobs([
        {"id": "backup-a", "schedule": "21:00", "enabled": 1, "next-run": int(now) + 600},
        {"id": "backup-off", "schedule": "*/5", "enabled": 0},
        {"id": "backup-b", "schedule": "sat 02:00", "type": "vzdump"},
    ])
    assert [j.job_id for j in jobs] == ["backup-a", "backup-b"]
    assert pve.next_backup_start(jobs, now) == pytest.approx(600, abs=1)
    assert pve.next_backup_start([], now) is None


def test_unreadable_schedule_is_conservative(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        wait = pve.next_backup_start([BackupJob("j", "2026-01-01 03:00", None)], 1000.0)
    assert wait == 0.0
    assert "not understood" in caplog.text


def test_preconditions_local_disks_resources_and_targets() -> None:
    pre = pve.parse_preconditions(101, {
        "running": 1, "has-dbus-vmstate": 1, "local_resources": [],
        "local_disks": [{"volid": "local-lvm:vm-101-disk-0", "size": 34359738368,
                         "cdrom": 0, "is_unused": 0}],
        "allowed_nodes": ["pve2"], "not_allowed_nodes": {"pve3": {"unavailable_storages":
                                                                  ["local-lvm"]}},
        "mapped-resources": [], "mapped-resource-info": {}})
    assert pre.unmovable == "local disks local-lvm:vm-101-disk-0"
    assert pre.blocks_target("pve3") and pre.blocks_target("pve4")
    assert not pre.blocks_target("pve2")
    clean = pve.parse_preconditions(102, {"running": 1, "local_disks": [
        {"volid": "none", "cdrom": 1}], "local_resources": []})
    assert clean.unmovable is None and not clean.blocks_target("anything")
    usb = pve.parse_preconditions(103, {"local_disks": [], "local_resources": ["usb0"]})
    assert usb.unmovable == "local resources usb0"


def test_rrd_points_of_the_last_minutes_only() -> None:
    now = 10_000.0
    data = [{"time": 9_700, "cpu": 0.9}, {"time": 9_900, "cpu": 0.5, "maxcpu": 8},
            {"time": 9_960, "cpu": 0.6}, {"time": 10_020}, {"time": "x", "cpu": 1}]
    assert pve.parse_rrd_cpu(data, now) == [(9_900.0, 0.5), (9_960.0, 0.6)]


def test_stale_or_skewed_rrd_is_not_used() -> None:
    data = [{"time": 5_000, "cpu": 0.9}, {"time": 5_060, "cpu": 0.8}]
    assert pve.parse_rrd_cpu(data, 5_100.0) == [(5_000.0, 0.9), (5_060.0, 0.8)]
    assert pve.parse_rrd_cpu(data, 5_060.0 + pve.RRD_MAX_AGE + 1) == []
    assert pve.parse_rrd_cpu(data, 5_060.0 - pve.RRD_MAX_AGE - 1) == []


def test_major_version() -> None:
    assert pve.parse_major_version({"release": "9.1", "version": "9.1.2",
                                    "repoid": "abcdef12"}) == 9
    with pytest.raises(PveError):
        pve.parse_major_version({"console": "html5"})


@pytest.mark.parametrize(("line", "message"), [
    ("", "empty"),
    ("pve-balancer@pve!agent", "no secret"),
    ("pve-balancer!agent=abc", "no realm"),
    ("pve-balancer@pve=abc", "no token id"),
    ("pve balancer@pve!agent=abc", "malformed"),
])
def test_token_errors_name_the_problem(line: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        ApiToken.parse(line)


def test_token_parse_and_secret_hidden(tmp_path: Path) -> None:
    token = ApiToken.parse("pve-balancer@pve!agent=2f1e-9a=x\n")
    assert token.token_id == "pve-balancer@pve!agent"
    assert token.secret == "2f1e-9a=x"
    assert "2f1e" not in repr(token)
    path = tmp_path / "pve-balancer.token"
    path.write_text("# the balancer's token\npve-balancer@pve!agent=s3cret\n")
    path.chmod(0o600)
    assert ApiToken.read(path).secret == "s3cret"
    with pytest.raises(TokenError, match="cannot read API token file"):
        ApiToken.read(tmp_path / "missing")


@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("21:00", "2026-11-25 15:00", "2026-11-25 21:00"),
    ("21:00", "2026-11-25 21:00", "2026-11-26 21:00"),
    ("*-*-* 02:30", "2026-11-25 15:00", "2026-11-26 02:30"),
    ("mon..fri 22:30", "2026-11-28 10:00", "2026-11-30 22:30"),  # Saturday -> Monday
    ("sat 02:00", "2026-11-25 15:00", "2026-11-28 02:00"),
    ("*/15", "2026-11-25 15:07", "2026-11-25 15:15"),
    ("hourly", "2026-11-25 15:07", "2026-11-25 16:00"),
    ("mon,wed 3:15", "2026-11-25 04:00", "2026-11-30 03:15"),
    ("fri..mon 01:00", "2026-11-26 12:00", "2026-11-27 01:00"),
])
def test_calendar_subset(schedule: str, after: str, expected: str) -> None:
    fmt = "%Y-%m-%d %H:%M"
    start = time.mktime(time.strptime(after, fmt))
    assert time.strftime(fmt, time.localtime(next_start(schedule, start))) == expected


@pytest.mark.parametrize("schedule", ["2026-01-01", "mon 02:00:30", "funday 02:00",
                                      "25:00", "", "monthly"])
def test_calendar_rejects_what_it_does_not_know(schedule: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(schedule)


def _schema_fields(path: str) -> set[str]:
    with gzip.open(SCHEMA) as fh:
        tree = json.load(fh)
    stack = list(tree)
    while stack:
        item = stack.pop()
        if item["path"] == path:
            returns = item["info"]["GET"]["returns"]
            props = returns.get("items", returns).get("properties", {})
            return set(props)
        stack.extend(item.get("children", []))
    raise AssertionError(f"{path} not in schema")


def test_parsers_read_only_fields_the_schema_declares() -> None:
    resources = _schema_fields("/cluster/resources")
    read = {"type", "node", "status", "cpu", "maxcpu", "mem", "memhost", "maxmem", "vmid",
            "id", "name", "hastate", "lock", "template", "tags"}
    assert read <= resources, read - resources
    backup = _schema_fields("/cluster/backup")
    assert {"id", "schedule", "enabled", "next-run"} <= backup
    migrate = _schema_fields("/nodes/{node}/qemu/{vmid}/migrate")
    assert {"local_disks", "local_resources", "allowed_nodes", "not_allowed_nodes",
            "has-dbus-vmstate"} <= migrate
    task = _schema_fields("/nodes/{node}/tasks/{upid}/status")
    assert {"status", "exitstatus", "upid", "type", "id", "starttime"} <= task


def test_connect_refuses_plain_http_and_a_missing_ca(tmp_path: Path) -> None:
    token = ApiToken.parse("pve-balancer@pve!agent=s")
    with pytest.raises(PveError, match="only https"):
        pve.connect("http://localhost:8006", token, verify=True)
    with pytest.raises(PveError, match=r"CA file .* does not exist"):
        pve.connect("https://localhost:8006", token, verify=str(tmp_path / "missing.pem"))
    client = pve.connect("https://[::1]:8443", token, verify=True)
    assert client.api._store["base_url"] == "https://[::1]:8443/api2/json"


def test_world_readable_token_file_is_warned_about(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pve-balancer.token"
    path.write_text("pve-balancer@pve!agent=s3cret\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        ApiToken.read(path)
    assert "readable by group/others" in caplog.text
    assert "s3cret" not in caplog.text
