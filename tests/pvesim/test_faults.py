"""Each injectable fault, as the real client (proxmoxer 2.2.0) sees it.

PVE's own failure shapes: an error is a status with the message as HTTP
reason phrase (proxmoxer puts it in ResourceException.content) and
`{"data": null, ...}` as body; a broken body reaches proxmoxer's JSON
serializer, which (2.2.0) hands back `{"errors": <raw bytes>}` instead of
raising; a timeout is a requests Timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from proxmoxer.core import ResourceException

from pvesim.faults import Fault, FaultInjector
from pvesim.server import ClusterServer
from pvesim.tls import ensure_pki
from pvesim.transport import attach
from tests.pvesim.conftest import StubCluster, proxmox_client

ADMIN = "root@pam!admin=s3cret"


@pytest.fixture
def injector(stub: StubCluster) -> FaultInjector:
    return FaultInjector(stub, seed=7)


@pytest.fixture
def api(injector: FaultInjector) -> Any:
    client = proxmox_client("pve1.invalid", ADMIN, timeout=5)
    attach(client, injector, "pve1")
    return client


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ensure_pki(d, ["pve1", "pve2"])
    return d


@pytest.fixture
def https(pki_dir: Path, injector: FaultInjector) -> Iterator[ClusterServer]:
    pki = ensure_pki(pki_dir, ["pve1", "pve2"])
    with ClusterServer(injector, pki, ["pve1", "pve2"]) as servers:
        servers.ca = str(pki.ca_cert_path)  # type: ignore[attr-defined]
        yield servers


def https_client(servers: ClusterServer, node: str = "pve1", timeout: float = 5) -> Any:
    host = servers.urls()[node].removeprefix("https://")
    return proxmox_client(host, ADMIN, verify=servers.ca, timeout=timeout)  # type: ignore[attr-defined]


# -- HTTP 5xx ------------------------------------------------------------------
def test_http_error_is_a_resource_exception_with_pve_message(
    api: Any, injector: FaultInjector, stub: StubCluster
) -> None:
    injector.add(kind="http_error", method="GET", path="/cluster/resources", count=1,
                 message="cluster not ready - no quorum?")
    with pytest.raises(ResourceException) as err:
        api.cluster.resources.get()
    assert err.value.status_code == 500
    assert err.value.status_message == "Internal Server Error"
    assert err.value.content == "cluster not ready - no quorum?"
    assert stub.seen == []  # the call never reached the API
    assert len(api.cluster.resources.get()) == 2  # count=1: next call is fine


def test_http_error_596_over_https(https: ClusterServer, injector: FaultInjector) -> None:
    injector.add(kind="http_error", status=596, path="/version", node="pve2",
                 message="Connection timed out")
    with pytest.raises(ResourceException) as err:
        https_client(https, "pve2").version.get()
    assert err.value.status_code == 596
    assert err.value.status_message.startswith("Errors during TLS negotiation")
    assert err.value.content == "Connection timed out"
    assert https_client(https, "pve1").version.get()["release"] == "9.1"  # node filter


# -- malformed / truncated JSON ------------------------------------------------
@pytest.mark.parametrize("kind", ["malformed_json", "truncated_json"])
def test_broken_bodies_reach_the_json_parser(api: Any, injector: FaultInjector,
                                             kind: str) -> None:
    injector.add(kind=kind, path="/cluster/resources", count=2)
    got = api.cluster.resources.get()
    # proxmoxer 2.2.0's JsonSerializer swallows the decode error like this:
    assert set(got) == {"errors"}
    assert isinstance(got["errors"], bytes)
    assert got["errors"].startswith(b'{"data"')
    raw = api._store["session"].get(api._store["base_url"] + "/cluster/resources")
    assert raw.status_code == 200
    with pytest.raises(requests.exceptions.JSONDecodeError):
        raw.json()


def test_truncated_body_over_https_is_half_the_document(
    https: ClusterServer, injector: FaultInjector
) -> None:
    client = https_client(https)
    session, base = client._store["session"], client._store["base_url"]
    full = session.get(base + "/cluster/resources")
    injector.add(kind="truncated_json", path="/cluster/*", count=1)
    cut = session.get(base + "/cluster/resources")
    assert cut.status_code == 200
    assert int(cut.headers["content-length"]) == len(cut.content) == len(full.content) // 2
    assert full.content.startswith(cut.content)
    with pytest.raises(requests.exceptions.JSONDecodeError):
        cut.json()


# -- missing fields ------------------------------------------------------------
def test_missing_fields_are_dropped_from_every_item(api: Any,
                                                    injector: FaultInjector) -> None:
    injector.add(kind="missing_fields", path_regex=r"/cluster/resources",
                 fields=("maxmem", "status"))
    got = api.cluster.resources.get()
    assert len(got) == 2
    assert all("status" not in item and "maxmem" not in item for item in got)
    assert {item["id"] for item in got} == {"node/pve1", "qemu/100"}
    version = api.version.get()  # other paths untouched
    assert version["release"] == "9.1"


# -- latency -------------------------------------------------------------------
def test_latency_is_virtual_in_process(stub: StubCluster, injector: FaultInjector) -> None:
    waited: list[float] = []
    client = proxmox_client("pve1.invalid", ADMIN, timeout=5)
    attach(client, injector, "pve1", sleep=waited.append)
    injector.add(kind="latency", seconds=2.5, path="/version")
    assert client.version.get()["release"] == "9.1"
    assert waited == [2.5]
    injector.add(kind="latency", seconds=3.0, path="/version")  # 5.5 s > 5 s timeout
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.version.get()
    assert waited == [2.5, 5.0]
    assert len(stub.seen) == 2  # the server did the work; the client gave up


def test_latency_over_https_really_sleeps(https: ClusterServer,
                                          injector: FaultInjector) -> None:
    injector.add(kind="latency", seconds=2.0, path="/version", count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        https_client(https, timeout=0.5).version.get()


# -- timeout -------------------------------------------------------------------
def test_timeout_in_process_is_a_read_timeout(api: Any, injector: FaultInjector,
                                              stub: StubCluster) -> None:
    injector.add(kind="timeout", method="POST", path="/nodes/*/qemu/*/migrate", count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.nodes("pve1").qemu(100).migrate.post(target="pve2")
    assert stub.seen == []
    injector.add(kind="timeout", method="POST", path="/nodes/*/qemu/*/migrate", count=1,
                 executed=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.nodes("pve1").qemu(100).migrate.post(target="pve2")
    assert [r.path for r in stub.seen] == ["/nodes/pve1/qemu/100/migrate"]  # it did happen


def test_timeout_over_https_holds_the_connection(https: ClusterServer,
                                                 injector: FaultInjector) -> None:
    injector.add(kind="timeout", path="/version", count=1)
    client = https_client(https, timeout=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.version.get()
    assert client.version.get()["release"] == "9.1"


def test_unreachable_node_over_https_times_out(https: ClusterServer,
                                               stub: StubCluster) -> None:
    client = https_client(https, "pve2", timeout=1)
    assert client.version.get()["release"] == "9.1"  # keep-alive connection open
    stub.reachable["pve2"] = False
    with pytest.raises(requests.exceptions.Timeout):
        client.version.get()  # on the kept-alive connection
    with pytest.raises(requests.exceptions.Timeout):
        https_client(https, "pve2", timeout=1).version.get()  # on a new one
    assert https_client(https, "pve1").version.get()["release"] == "9.1"
    stub.reachable["pve2"] = True
    assert client.version.get()["release"] == "9.1"


# -- matching, count, probability, validation ----------------------------------
def test_probability_is_seeded_and_reproducible(stub: StubCluster) -> None:
    def pattern(seed: int) -> list[bool]:
        inj = FaultInjector(stub, seed=seed)
        inj.add(kind="http_error", path="/version", probability=0.5)
        client = proxmox_client("pve1.invalid", ADMIN)
        attach(client, inj, "pve1")
        out = []
        for _ in range(40):
            try:
                client.version.get()
                out.append(False)
            except ResourceException:
                out.append(True)
        return out

    first = pattern(3)
    assert first == pattern(3)
    assert 0 < sum(first) < 40
    assert first != pattern(4)


def test_method_filter_and_fault_listing(api: Any, injector: FaultInjector) -> None:
    fault = injector.add(kind="http_error", method="POST", path="*")
    assert api.version.get()["release"] == "9.1"  # a GET: not matched
    with pytest.raises(ResourceException):
        api.nodes("pve1").qemu(100).migrate.post(target="pve2")
    listed = injector.faults
    assert [(f.id, f.fired) for f in listed] == [(fault.id, 1)]
    assert injector.remove(fault.id)
    assert not injector.remove(fault.id)
    assert api.nodes("pve1").qemu(100).migrate.post(target="pve2").startswith("UPID:")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "explode"}, "fault kind 'explode'"),
        ({"kind": "http_error", "status": 404}, "must be 5xx"),
        ({"kind": "missing_fields"}, "at least one field"),
        ({"kind": "latency", "probability": 2}, "within 0..1"),
        ({"kind": "latency", "path_regex": "("}, "path_regex"),
        ({"kind": "latency", "colour": "red"}, "unknown key"),
        ({"path": "/x"}, "'kind' is required"),
        ({"kind": "timeout", "count": "3"}, "fault count: expected int/null, got '3'"),
        ({"kind": "latency", "seconds": True}, "fault seconds: expected"),
        ({"kind": "timeout", "executed": 1}, "fault executed: expected bool"),
    ],
)
def test_bad_fault_specs_are_named(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.from_dict(spec)


def test_fault_round_trips_through_dict() -> None:
    fault = Fault.from_dict({"kind": "missing_fields", "fields": "cpu,mem", "node": "pve2"})
    assert fault.fields == ("cpu", "mem")
    assert Fault.from_dict({k: v for k, v in fault.to_dict().items()
                            if k not in ("id", "fired")}) == fault


def test_http_error_body_is_pve_shaped(api: Any, injector: FaultInjector) -> None:
    injector.add(kind="http_error", status=503, path="/version",
                 message="service unavailable\nretry later")
    raw = api._store["session"].get(api._store["base_url"] + "/version")
    assert raw.status_code == 503
    assert raw.reason == "service unavailable retry later"  # one line, like pveproxy
    assert raw.json() == {"data": None}


# -- connection reset ----------------------------------------------------------
def test_connection_reset_in_process(api: Any, injector: FaultInjector,
                                     stub: StubCluster) -> None:
    injector.add(kind="connection_reset", method="POST", count=1, executed=True)
    with pytest.raises(requests.exceptions.ConnectionError) as err:
        api.nodes("pve1").qemu(100).migrate.post(target="pve2")
    assert not isinstance(err.value, requests.exceptions.Timeout)
    assert [r.method for r in stub.seen] == ["POST"]  # executed, answer lost


def test_connection_reset_over_https(https: ClusterServer, injector: FaultInjector,
                                     stub: StubCluster) -> None:
    injector.add(kind="connection_reset", path="/version", count=1)
    client = https_client(https)
    with pytest.raises(requests.exceptions.ConnectionError) as err:
        client.version.get()
    assert not isinstance(err.value, requests.exceptions.Timeout)
    assert stub.seen == []
    assert client.version.get()["release"] == "9.1"
