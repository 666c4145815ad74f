"""`python -m pvesim serve` as a separate process, used through proxmoxer
2.2.0 over real HTTPS with certificate verification on (CA from the
connection file): issue 2's acceptance, plus the control endpoint and a
clean shutdown."""

from __future__ import annotations

import json
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from proxmoxer.core import ResourceException

from pvesim.control import ControlClient, ControlError
from pvesim.tls import ensure_pki
from tests.pvesim.conftest import ServeLab, proxmox_client, start_lab

SCENARIO = """
name: wire-acceptance
nodes:
  - {name: pve1, cores: 16, memory: 64G}
  - {name: pve2, cores: 16, memory: 64G}
  - {name: pve3, cores: 16, memory: 64G}
guests:
  - {vmid: 100, node: pve1, name: web, cores: 2, memory: 8G, demand: {cpu: 0.5, mem: 6G}}
  - {vmid: 101, node: pve1, name: db, cores: 4, memory: 16G, demand: {cpu: 1.0, mem: 12G}}
  - {vmid: 102, node: pve2, name: cache, cores: 2, memory: 4G, demand: {cpu: 0.2, mem: 2G}}
"""


def write_scenario(directory: Path, text: str = SCENARIO) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scenario.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeLab]:
    tmp = tmp_path_factory.mktemp("serve")
    running = start_lab(tmp, write_scenario(tmp), "--speed", "4", "--seed", "3")
    yield running
    running.stop()


def wait_for(what: str, probe: Any, limit: float = 60.0) -> Any:
    """Poll `probe` until it returns something truthy (a bound, not an assertion on speed)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_connection_file_describes_the_lab(lab: ServeLab) -> None:
    conn = lab.conn
    assert stat.S_IMODE(lab.conn_path.stat().st_mode) == 0o600
    assert conn["pid"] == lab.proc.pid
    assert sorted(conn["nodes"]) == ["pve1", "pve2", "pve3"]
    assert conn["api_url"] == conn["nodes"]["pve1"]["api_url"]
    assert conn["token_id"] == "pve-balancer@pve!agent"
    assert conn["tokens"][conn["token_id"]] == conn["token_secret"]
    ports = {info["api_url"].rsplit(":", 1)[1] for info in conn["nodes"].values()}
    assert len(ports) == 3  # one listener per node
    ca = Path(conn["ca_cert"]).read_bytes()
    for info in conn["nodes"].values():
        assert info["api_url"].startswith("https://127.0.0.1:")
        root = Path(info["pve_root"])
        assert (root / "pve-root-ca.pem").read_bytes() == ca
        token_file = root / "priv" / "pve-balancer.token"
        assert token_file.read_text() == f"{conn['token_id']}={conn['token_secret']}\n"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert not (root / "balancer.yaml").exists()  # the scenario has no balancer_config
    assert conn["control_url"].startswith("http://127.0.0.1:")


def test_list_cluster_resources(lab: ServeLab) -> None:
    api = lab.client()
    items = api.cluster.resources.get()
    nodes = {i["node"] for i in items if i["type"] == "node"}
    guests = {i["vmid"]: i for i in items if i["type"] in ("qemu", "lxc")}
    assert nodes == {"pve1", "pve2", "pve3"}
    assert sorted(guests) == [100, 101, 102]
    assert guests[100]["node"] == "pve1"
    vms = api.cluster.resources.get(type="vm")
    assert {i["type"] for i in vms} == {"qemu"}


def test_migration_followed_by_upid_to_ok(lab: ServeLab) -> None:
    ctl = ControlClient.from_connection(lab.conn)
    api = lab.client(node="pve2")  # any node's API can start it
    ctl.call("POST", "/pause")  # hold the clock so "running" is observed on any machine
    try:
        upid = api.nodes("pve1").qemu(100).migrate.post(target="pve3", online=1)
        assert upid.startswith("UPID:pve1:") and ":qmigrate:100:" in upid
        assert api.nodes("pve1").tasks(upid).status.get()["status"] == "running"
        assert api.nodes("pve1").qemu(100).config.get()["lock"] == "migrate"
        during = {i["vmid"]: i for i in api.cluster.resources.get(type="vm")}
        assert (during[100]["node"], during[100].get("lock")) == ("pve1", "migrate")
        running = [t for t in api.cluster.tasks.get() if t["upid"] == upid]
        assert running and "endtime" not in running[0]
    finally:
        ctl.call("POST", "/resume")
    seen_lock: list[Any] = []

    def finished() -> dict[str, Any] | None:
        status = api.nodes("pve1").tasks(upid).status.get()
        if status["status"] == "running":
            seen_lock.append(api.nodes("pve1").qemu(100).config.get().get("lock"))
            return None
        return dict(status)

    final = wait_for("migration task to stop", finished)
    assert final["exitstatus"] == "OK"
    assert set(seen_lock) <= {"migrate"}
    moved = {i["vmid"]: i for i in api.cluster.resources.get(type="vm")}
    assert moved[100]["node"] == "pve3"
    assert "lock" not in moved[100]
    assert "lock" not in api.nodes("pve3").qemu(100).config.get()
    done = [t for t in api.cluster.tasks.get() if t["upid"] == upid]
    assert done and done[0]["status"] == "OK"


def test_missing_vm_migrate_privilege_is_403(lab: ServeLab) -> None:
    auditor = f"auditor@pve!audit={lab.conn['tokens']['auditor@pve!audit']}"
    api = proxmox_client(lab.host_port(), auditor, verify=lab.conn["ca_cert"])
    assert api.cluster.resources.get(type="vm")  # it may look
    with pytest.raises(ResourceException) as err:
        api.nodes("pve1").qemu(101).migrate.post(target="pve2", online=1)
    assert err.value.status_code == 403
    assert "VM.Migrate" in err.value.content


def test_wrong_secret_is_401(lab: ServeLab) -> None:
    api = proxmox_client(lab.host_port(), f"{lab.conn['token_id']}=not-the-secret",
                         verify=lab.conn["ca_cert"])
    with pytest.raises(ResourceException) as err:
        api.version.get()
    assert err.value.status_code == 401


def test_certificate_verification_is_on(lab: ServeLab, tmp_path: Path) -> None:
    other_ca = ensure_pki(tmp_path, ["pve1"]).ca_cert_path
    api = proxmox_client(lab.host_port(), "x@pve!y=z", verify=str(other_ca))
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        api.version.get()


def test_control_needs_the_token(lab: ServeLab) -> None:
    with pytest.raises(ControlError) as err:
        ControlClient(lab.conn["control_url"], "wrong").state()
    assert err.value.status == 401


def test_control_faults_and_request_log(lab: ServeLab) -> None:
    ctl = ControlClient.from_connection(lab.conn)
    api = lab.client(node="pve2")
    mark = ctl.requests()["next"]
    fault = ctl.add_fault(kind="http_error", path="/cluster/resources", node="pve2",
                          count=1, message="got timeout")
    with pytest.raises(ResourceException) as err:
        api.cluster.resources.get()
    assert (err.value.status_code, err.value.content) == (500, "got timeout")
    assert api.cluster.resources.get()
    assert [f["fired"] for f in ctl.faults() if f["id"] == fault["id"]] == [1]
    ctl.clear_faults()
    assert ctl.faults() == []
    with pytest.raises(ControlError) as bad:
        ctl.add_fault(kind="nonsense")
    assert bad.value.status == 400
    entries = ctl.requests(mark)["entries"]
    assert any(e["path"] == "/cluster/resources" and e["served_by"] == "pve2"
               and e["status"] == 200 for e in entries)


def test_control_power_and_network(lab: ServeLab) -> None:
    ctl = ControlClient.from_connection(lab.conn)
    assert ctl.state()["nodes"]["pve2"]["reachable"] is True
    before = ctl.state()["now"]
    assert ctl.advance(30) >= before + 30
    ctl.network("pve2", up=False)
    try:
        assert ctl.state()["nodes"]["pve2"]["reachable"] is False
        with pytest.raises(requests.exceptions.Timeout):
            lab.client(node="pve2", timeout=1).version.get()
        assert lab.client(node="pve1").version.get()["release"]
    finally:
        ctl.network("pve2", up=True)
    assert lab.client(node="pve2").version.get()["release"]
    ctl.power("pve3", on=False)
    with pytest.raises(requests.exceptions.Timeout):
        lab.client(node="pve3", timeout=1).version.get()
    ctl.power("pve3", on=True)
    wait_for("pve3 back", lambda: ctl.state()["nodes"]["pve3"]["reachable"])
    ctl.maintenance("pve2", on=True)
    ctl.maintenance("pve2", on=False)
    with pytest.raises(ControlError) as err:
        ctl.power("pve9", on=False)
    assert err.value.status == 404
    assert isinstance(ctl.metrics(), dict)


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("https://").removeprefix("http://").split("/")[0].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_stops_cleanly_and_writes_metrics(tmp_path: Path, spawn_lab: Any) -> None:
    metrics = tmp_path / "out" / "metrics.json"
    lab = spawn_lab(tmp_path, write_scenario(tmp_path), "--metrics-out", str(metrics))
    state_dir = Path(lab.conn["state_dir"])
    assert state_dir.is_dir()
    assert lab.client().version.get()["release"]
    assert lab.stop(signal.SIGTERM) == 0
    assert all(_port_closed(n["api_url"]) for n in lab.conn["nodes"].values())
    assert _port_closed(lab.conn["control_url"])
    assert not state_dir.exists()  # a temporary state dir is removed
    assert isinstance(json.loads(metrics.read_text()), dict)
    assert lab.conn_path.exists()  # what the user asked for stays


def test_sigint_keeps_a_given_state_dir_and_writes_balancer_yaml(
    tmp_path: Path, spawn_lab: Any
) -> None:
    state = tmp_path / "state"
    text = SCENARIO + "balancer_config:\n  cpu_max: 0.7\n  dry_run: true\n"
    lab = spawn_lab(tmp_path, write_scenario(tmp_path, text), "--state-dir", str(state))
    root = Path(lab.conn["nodes"]["pve2"]["pve_root"])
    assert (root / "balancer.yaml").read_text() == "cpu_max: 0.7\ndry_run: true\n"
    assert lab.stop(signal.SIGINT) == 0
    assert (state / "pki" / "pve-root-ca.pem").is_file()
    assert (root / "priv" / "pve-balancer.token").is_file()


def test_bad_scenario_is_a_clear_error(tmp_path: Path) -> None:
    bad = write_scenario(tmp_path, "nodes: []\n")
    with pytest.raises(AssertionError, match="exited 2"):
        start_lab(tmp_path, bad)
    assert "nodes" in (tmp_path / "serve.log").read_text()
    assert not (tmp_path / "connection.json").exists()


def test_control_clock_and_routing_errors(lab: ServeLab) -> None:
    ctl = ControlClient.from_connection(lab.conn)
    ctl.call("POST", "/speed", {"speed": 2})
    assert ctl.state()["speed"] == 2
    ctl.call("POST", "/speed", {"speed": 4})
    for method, path, body, status in [
        ("POST", "/speed", {"speed": 0}, 400),
        ("POST", "/speed", {"speed": "fast"}, 400),
        ("POST", "/nodes/pve1/power", {"on": "yes"}, 400),
        ("GET", "/advance", None, 405),
        ("GET", "/nothing-here", None, 404),
    ]:
        with pytest.raises(ControlError) as err:
            ctl.call(method, path, body)
        assert err.value.status == status, (method, path)
    ctl.call("POST", "/pause")
    try:
        assert ctl.state()["paused"] is True
        frozen = ctl.state()["now"]
        assert ctl.advance(5) == pytest.approx(frozen + 5)  # stepping works while paused
    finally:
        ctl.call("POST", "/resume")
    assert ctl.state()["paused"] is False


def test_isolated_api_local_keeps_answering_its_own_agent(tmp_path: Path,
                                                          spawn_lab: Any) -> None:
    lab = spawn_lab(tmp_path, write_scenario(tmp_path), "--isolated-api", "local")
    assert lab.conn["isolated_api"] == "local"
    ctl = ControlClient.from_connection(lab.conn)
    ctl.network("pve2", up=False)
    local = lab.client(node="pve2", timeout=5)
    status = local.cluster.status.get()
    cluster = next(s for s in status if s["type"] == "cluster")
    assert cluster["quorate"] == 0  # what the isolated node itself sees
    assert local.nodes("pve2").status.get()["cpuinfo"]["cpus"] == 16
    with pytest.raises(ResourceException) as err:
        local.nodes("pve1").status.get()
    assert err.value.status_code == 596
    ctl.power("pve2", on=False)  # powered off: silent even in this mode
    with pytest.raises(requests.exceptions.Timeout):
        lab.client(node="pve2", timeout=1).version.get()
    assert lab.stop() == 0


def test_serve_starts_the_simulated_clock_at_the_wall_clock(lab: ServeLab) -> None:
    """Clients compare task and RRD times with their own clock, as on a real
    cluster, so a real-time lab must not live in another year."""
    now = ControlClient.from_connection(lab.conn).state()["now"]
    # the module's lab runs at 4x since it started: well within an hour of now
    assert abs(now - time.time()) < 3600


def test_serve_keeps_a_start_time_the_scenario_pins(tmp_path: Path, spawn_lab: Any) -> None:
    pinned = 1_700_000_000
    scenario = write_scenario(tmp_path, SCENARIO + f"start_time: {pinned}\n")
    running = spawn_lab(tmp_path, scenario)
    now = ControlClient.from_connection(running.conn).state()["now"]
    assert pinned <= now < pinned + 3600
    running.stop()
