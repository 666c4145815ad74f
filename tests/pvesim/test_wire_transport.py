"""Reading requests like pveproxy, and the in-process requests transport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from pvesim.faults import FaultInjector
from pvesim.server import ClusterServer
from pvesim.tls import ensure_pki
from pvesim.transport import BadRequestError, attach, parse_api_request
from tests.pvesim.conftest import StubCluster, proxmox_client

ADMIN = "root@pam!admin=s3cret"


def test_query_string_and_form_body_are_merged() -> None:
    req = parse_api_request(
        "post", "/api2/json/nodes/pve1/qemu/100/migrate?online=1",
        {"content-type": "application/x-www-form-urlencoded", "Authorization": "x"},
        b"target=pve2&with-local-disks=0", "pve3",
    )
    assert req.method == "POST"
    assert req.path == "/nodes/pve1/qemu/100/migrate"
    assert req.params == {"online": "1", "target": "pve2", "with-local-disks": "0"}
    assert req.headers == {"content-type": "application/x-www-form-urlencoded",
                           "authorization": "x"}
    assert req.served_by == "pve3"


def test_json_body_values_become_strings_and_lists_repeat() -> None:
    body = json.dumps({"online": True, "bwlimit": 100, "tags": ["a", "b"]}).encode()
    req = parse_api_request("POST", "/api2/json/x", {"content-type": "application/json"},
                            body, "pve1")
    assert req.params == {"online": "1", "bwlimit": "100", "tags": "a\0b"}


def test_path_is_unquoted_and_trailing_slash_dropped() -> None:
    req = parse_api_request(
        "GET", "/api2/json/nodes/pve1/tasks/UPID%3Apve1%3A0001%3A/status/", {}, b"", "pve1")
    assert req.path == "/nodes/pve1/tasks/UPID:pve1:0001:/status"
    assert parse_api_request("GET", "/api2/json", {}, b"", "pve1").path == "/"


@pytest.mark.parametrize(
    ("target", "ctype", "body", "status"),
    [
        ("/index.html", "", b"", 404),
        ("/api2/extjs/version", "", b"", 501),
        ("/api2/json/x", "application/json", b"{not json", 400),
        ("/api2/json/x", "application/json", b"[1]", 400),
        ("/api2/json/x", "text/plain", b"hello", 415),
    ],
)
def test_unreadable_requests_are_refused(target: str, ctype: str, body: bytes,
                                         status: int) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_api_request("POST", target, {"content-type": ctype}, body, "pve1")
    assert err.value.status == status


def test_proxmoxer_runs_its_real_code_in_process(stub: StubCluster) -> None:
    api = proxmox_client("pve1.invalid:8006", ADMIN)
    attach(api, stub, "pve2")
    got = api.cluster.resources.get(type="vm")
    assert [g["vmid"] for g in got] == [100]
    upid = api.nodes("pve1").qemu(100).migrate.post(target="pve2", online=1)
    assert upid.startswith("UPID:pve1:")
    last = stub.seen[-1]
    # what proxmoxer put on the wire: form body, token header, served_by
    assert last.method == "POST"
    assert last.params == {"target": "pve2", "online": "1"}
    assert last.headers["authorization"] == "PVEAPIToken=root@pam!admin=s3cret"
    assert last.headers["content-type"] == "application/x-www-form-urlencoded"
    assert last.served_by == "pve2"


def test_errors_reach_proxmoxer_as_resource_exceptions(stub: StubCluster) -> None:
    from proxmoxer.core import ResourceException

    api = proxmox_client("pve1.invalid", "auditor@pve!audit=aud1t")
    attach(api, stub, "pve1")
    with pytest.raises(ResourceException) as err:
        api.nodes("pve1").qemu(100).migrate.post(target="pve2")
    assert err.value.status_code == 403
    assert err.value.content == "Permission check failed (/vms/100, VM.Migrate)"
    bad = proxmox_client("pve1.invalid", "root@pam!admin=wrong")
    attach(bad, stub, "pve1")
    with pytest.raises(ResourceException) as err:
        bad.version.get()
    assert err.value.status_code == 401


def test_unreachable_node_raises_connect_timeout(stub: StubCluster) -> None:
    waited: list[float] = []
    api = proxmox_client("pve1.invalid", ADMIN, timeout=7)
    adapter = attach(api, stub, "pve2", sleep=waited.append)
    stub.reachable["pve2"] = False
    with pytest.raises(requests.exceptions.ConnectTimeout):
        api.version.get()
    assert waited == [7.0]
    assert adapter.virtual_wait == 7.0
    stub.reachable["pve2"] = True
    assert api.version.get()["release"] == "9.1"


def test_unreachability_is_seen_through_the_fault_injector(stub: StubCluster) -> None:
    api = proxmox_client("pve1.invalid", ADMIN)
    attach(api, FaultInjector(stub), "pve1")
    stub.reachable["pve1"] = False
    with pytest.raises(requests.exceptions.ConnectionError):
        api.version.get()


def test_attach_rejects_non_proxmoxer_objects(stub: StubCluster) -> None:
    with pytest.raises(TypeError, match="ProxmoxAPI"):
        attach(object(), stub, "pve1")


def test_https_reads_query_form_and_json_like_in_process(
    stub: StubCluster, tmp_path: Path
) -> None:
    pki = ensure_pki(tmp_path, ["pve1", "pve2"])
    auth = {"Authorization": "PVEAPIToken=root@pam!admin=s3cret"}
    with ClusterServer(stub, pki, ["pve1", "pve2"]) as servers:
        base = servers.urls()["pve2"] + "/api2/json/echo"
        ca = str(pki.ca_cert_path)
        form = requests.post(base + "?a=1", data={"b": "2", "c": ["x", "y"]}, headers=auth,
                             verify=ca, timeout=5).json()["data"]
        body = requests.put(base, json={"online": True, "n": 3}, headers=auth, verify=ca,
                            timeout=5).json()["data"]
        get = requests.get(base + "/", params={"type": "vm"}, headers=auth, verify=ca,
                           timeout=5).json()["data"]
        missing = requests.get(servers.urls()["pve1"] + "/index.html", verify=ca, timeout=5)
    assert form == {"method": "POST", "params": {"a": "1", "b": "2", "c": "x\0y"},
                    "served_by": "pve2"}
    assert body == {"method": "PUT", "params": {"online": "1", "n": "3"}, "served_by": "pve2"}
    assert get == {"method": "GET", "params": {"type": "vm"}, "served_by": "pve2"}
    assert missing.status_code == 404
