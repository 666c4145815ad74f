"""proxmoxer against the real Simulator through the in-process transport, in
stepped virtual time: the acceptance path without sockets, deterministic."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from proxmoxer.core import ResourceException

from pvesim.cluster import Simulator
from pvesim.faults import FaultInjector
from pvesim.scenario import Scenario
from pvesim.transport import attach
from tests.pvesim.conftest import proxmox_client

SCENARIO: dict[str, Any] = {
    "name": "wire-in-process",
    "nodes": [{"name": f"pve{i}", "cores": 16, "memory": "64G"} for i in (1, 2, 3)],
    "guests": [
        {"vmid": 100, "node": "pve1", "cores": 2, "memory": "8G",
         "demand": {"cpu": 0.5, "mem": "6G"}},
        {"vmid": 101, "node": "pve2", "cores": 2, "memory": "4G",
         "demand": {"cpu": 0.5, "mem": "2G"}},
    ],
}


@pytest.fixture
def sim() -> Simulator:
    return Simulator(Scenario.from_dict(SCENARIO), seed=1)


def client(sim: Simulator, node: str = "pve1", token: str = "pve-balancer@pve!agent",
           handler: Any = None) -> Any:
    api = proxmox_client(f"{node}.invalid:8006", f"{token}={sim.tokens[token]}")
    attach(api, handler or sim, node)
    return api


def test_migration_in_stepped_time(sim: Simulator) -> None:
    api = client(sim, "pve2")
    upid = api.nodes("pve1").qemu(100).migrate.post(target="pve3", online=1)
    locks, states = [], []
    for _ in range(600):
        status = api.nodes("pve1").tasks(upid).status.get()
        states.append(status["status"])
        if status["status"] == "stopped":
            break
        locks.append(api.nodes("pve1").qemu(100).config.get().get("lock"))
        sim.advance(1.0)
    assert states[0] == "running" and states[-1] == "stopped"
    assert status["exitstatus"] == "OK"
    assert "migrate" in locks
    where = {g["vmid"]: g["node"] for g in api.cluster.resources.get(type="vm")}
    assert where == {100: "pve3", 101: "pve2"}
    served = [r.served_by for r in sim.request_log if r.path.endswith("/migrate")]
    assert served == ["pve2"]


def test_auth_errors_through_proxmoxer(sim: Simulator) -> None:
    with pytest.raises(ResourceException) as err:
        client(sim, token="auditor@pve!audit").nodes("pve1").qemu(100).migrate.post(
            target="pve2")
    assert err.value.status_code == 403
    api = proxmox_client("pve1.invalid", "pve-balancer@pve!agent=wrong")
    attach(api, sim, "pve1")
    with pytest.raises(ResourceException) as err:
        api.version.get()
    assert err.value.status_code == 401


def test_cut_network_makes_the_local_api_unreachable(sim: Simulator) -> None:
    api = client(sim, "pve2", handler=FaultInjector(sim))
    assert api.nodes("pve2").status.get()
    sim.cut_network("pve2")
    with pytest.raises(requests.exceptions.ConnectTimeout):
        api.nodes("pve2").status.get()
    other = client(sim, "pve1")
    with pytest.raises(ResourceException) as err:
        other.nodes("pve2").status.get()
    assert err.value.status_code == 596
    sim.restore_network("pve2")
    assert api.nodes("pve2").status.get()


def test_missing_fields_fault_on_real_resources(sim: Simulator) -> None:
    injector = FaultInjector(sim)
    api = client(sim, handler=injector)
    full = api.cluster.resources.get(type="vm")
    assert all("maxmem" in g for g in full)
    injector.add(kind="missing_fields", path="/cluster/resources", fields=("maxmem",))
    cut = api.cluster.resources.get(type="vm")
    assert [sorted(set(g) - {"maxmem"}) for g in full] == [sorted(g) for g in cut]


def test_reachable_override_models_the_isolated_nodes_own_view(sim: Simulator) -> None:
    api = proxmox_client("pve2.invalid", f"root@pam!admin={sim.tokens['root@pam!admin']}")
    attach(api, sim, "pve2", reachable=lambda n: sim.node(n).powered)
    sim.cut_network("pve2")
    cluster = next(s for s in api.cluster.status.get() if s["type"] == "cluster")
    assert cluster["quorate"] == 0
    sim.power_off("pve2")
    with pytest.raises(requests.exceptions.ConnectTimeout):
        api.version.get()
