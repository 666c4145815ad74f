"""`python -m pvesim run` (stepped, no agent), the real-time driver and the
control surface's Python side."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pvesim.__main__ import main
from pvesim.cluster import Simulator
from pvesim.control import ControlError, SimControl
from pvesim.faults import FaultInjector
from pvesim.protocol import ApiRequest, ApiResponse
from pvesim.realtime import RealtimeDriver
from pvesim.scenario import Scenario
from pvesim.server import NodeServer
from pvesim.tls import ensure_pki
from tests.pvesim.conftest import REPO, proxmox_client

SCENARIO = """
name: run-cli
duration: 600
nodes:
  - {name: pve1, cores: 4, memory: 16G}
  - {name: pve2, cores: 4, memory: 16G}
guests:
  - {vmid: 100, node: pve1, cores: 4, memory: 4G, demand: {cpu: 3.0, mem: 3G}}
  - {vmid: 101, node: pve1, cores: 4, memory: 4G, demand: {cpu: 2.5, mem: 3G}}
events:
  - {at: 120, action: migrate, vmid: 101, target: pve2}
"""


def test_run_writes_identical_metrics_for_one_seed(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        assert main(["run", "--scenario", str(scenario), "--duration", "600",
                     "--seed", "4", "--step", "5", "--metrics-out", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1]
    assert outs[0]  # something was measured


def test_run_as_a_process_and_bad_input(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "m.json"
    png = tmp_path / "plot.png"
    proc = subprocess.run(
        [sys.executable, "-m", "pvesim", "run", "--scenario", str(scenario),
         "--duration", "600", "--metrics-out", str(out), "--plot", str(png)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(out.read_text()), dict)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert main(["run", "--scenario", str(tmp_path / "missing.yaml"), "--duration", "60",
                 "--metrics-out", str(out)]) == 2
    assert main(["run", "--scenario", str(scenario), "--duration", "0",
                 "--metrics-out", str(out)]) == 2


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.done = threading.Event()

    def advance(self, seconds: float) -> None:
        self.steps.append(seconds)
        if len(self.steps) >= 3:
            self.done.set()


def test_realtime_driver_advances_pauses_and_validates() -> None:
    ticks = iter(float(i) for i in range(1000))
    sim = _Recorder()
    driver = RealtimeDriver(sim, speed=10.0, tick=0.01, monotonic=lambda: next(ticks))
    driver.start()
    assert sim.done.wait(10)
    driver.stop()
    assert sim.steps[:3] == [10.0, 10.0, 10.0]  # one fake second per tick, x10
    paused = _Recorder()
    quiet = RealtimeDriver(paused, tick=0.01)
    quiet.pause()
    quiet.start()
    assert not paused.done.wait(0.2)
    quiet.stop()
    assert paused.steps == []
    with pytest.raises(ValueError, match="speed"):
        RealtimeDriver(sim, speed=0)
    with pytest.raises(ValueError, match="speed"):
        driver.speed = -1


def test_realtime_driver_stops_on_a_physics_error() -> None:
    class Broken:
        def advance(self, seconds: float) -> None:
            raise RuntimeError("boom")

    driver = RealtimeDriver(Broken(), tick=0.01)
    driver.start()
    for _ in range(1000):
        if not driver.running:
            break
        threading.Event().wait(0.01)
    assert not driver.running  # the clock thread ended by itself
    driver.stop()
    assert isinstance(driver.error, RuntimeError)


def test_sim_control_python_api() -> None:
    sim = Simulator(Scenario.from_dict({
        "name": "ctl", "nodes": [{"name": "pve1"}, {"name": "pve2"}, {"name": "pve3"}],
    }))
    ctl = SimControl(sim, FaultInjector(sim))
    t0 = ctl.state()["now"]
    assert ctl.advance(60) == pytest.approx(t0 + 60)
    ctl.network("pve2", up=False)
    assert ctl.state()["nodes"]["pve2"] == {
        "reachable": False, "powered": True, "network": False, "maintenance": False}
    ctl.network("pve2", up=True)
    ctl.power("pve3", on=False)
    assert not sim.node_reachable("pve3")
    ctl.power("pve3", on=True)
    ctl.maintenance("pve1", on=True)
    assert sim.nodes["pve1"].maintenance
    fault = ctl.add_fault({"kind": "latency", "seconds": 2})
    assert [f["id"] for f in ctl.faults()] == [fault["id"]]
    ctl.remove_fault(fault["id"])
    with pytest.raises(ControlError) as err:
        ctl.remove_fault(fault["id"])
    assert err.value.status == 404
    with pytest.raises(ControlError) as err:
        ctl.pause()  # stepped mode: no real-time clock
    assert err.value.status == 409
    with pytest.raises(ControlError):
        ctl.advance(-1)
    assert isinstance(ctl.metrics(), dict)
    assert ctl.requests()["entries"] == []


def test_a_failing_handler_answers_500_and_the_listener_survives(tmp_path: Path) -> None:
    class Flaky:
        calls = 0

        def handle(self, request: ApiRequest) -> ApiResponse:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise KeyError("oops")
            return ApiResponse(200, b'{"data":{"release":"9.1"}}')

    pki = ensure_pki(tmp_path, ["pve1"])
    server = NodeServer("pve1", Flaky(), pki.nodes["pve1"])
    server.start()
    try:
        from proxmoxer.core import ResourceException

        api: Any = proxmox_client(server.url.removeprefix("https://"), "a@pve!b=c",
                                  verify=str(pki.ca_cert_path))
        with pytest.raises(ResourceException) as err:
            api.version.get()
        assert err.value.status_code == 500
        assert "oops" in err.value.content
        assert api.version.get()["release"] == "9.1"
    finally:
        server.stop()
