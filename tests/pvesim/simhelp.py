"""Shared helpers for the simulator core tests: build a simulator from a
scenario dict or a named scenario and call its API in-process."""

from __future__ import annotations

import json
from typing import Any

from pvesim.cluster import Simulator
from pvesim.protocol import ApiRequest
from pvesim.scenario import Scenario
from tests.scenarios import scenario_path

AGENT = "pve-balancer@pve!agent"
ADMIN = "root@pam!admin"
AUDIT = "auditor@pve!audit"


def named(name: str, seed: int = 0) -> Simulator:
    return Simulator.from_file(scenario_path(name), seed=seed)


def from_dict(d: dict[str, Any], seed: int = 0) -> Simulator:
    return Simulator(Scenario.from_dict(d), seed=seed)


def call(
    sim: Simulator,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    token: str | None = AGENT,
    secret: str | None = None,
    served_by: str = "pve1",
) -> tuple[int, str, Any]:
    """(status, reason, decoded body)."""
    headers = {}
    if token is not None:
        headers["authorization"] = f"PVEAPIToken={token}={secret or sim.tokens[token]}"
    resp = sim.handle(ApiRequest(method, path, dict(params or {}), headers, served_by))
    return resp.status, resp.reason, json.loads(resp.body)


def data(sim: Simulator, method: str, path: str, **kw: Any) -> Any:
    status, reason, body = call(sim, method, path, **kw)
    assert status == 200, (status, reason, body)
    return body["data"]
