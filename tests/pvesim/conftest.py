"""Fixtures for the simulator's wire tests.

`StubCluster` is a deliberately tiny ApiHandler with PVE's auth and error
shapes, used where a test is about the wire (parsing, TLS, faults,
transport) and not about cluster behaviour; cluster behaviour is tested
against the real `pvesim.cluster.Simulator`.

`start_lab` starts `python -m pvesim serve` as a real subprocess and returns
once its connection file exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pvesim.faults import pve_error
from pvesim.protocol import ApiRequest, ApiResponse

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "scenarios"


def _ok(data: Any) -> ApiResponse:
    return ApiResponse(200, json.dumps({"data": data}).encode())


@dataclass
class StubCluster:
    """Two nodes, one VM, two tokens: enough PVE to exercise the wire."""

    node_names: list[str] = field(default_factory=lambda: ["pve1", "pve2"])
    tokens: dict[str, str] = field(
        default_factory=lambda: {"root@pam!admin": "s3cret", "auditor@pve!audit": "aud1t"}
    )
    reachable: dict[str, bool] = field(default_factory=dict)
    seen: list[ApiRequest] = field(default_factory=list)
    lock: Any = field(default_factory=threading.RLock)
    now: float = 1_700_000_000.0

    def node_reachable(self, name: str) -> bool:
        return self.reachable.get(name, True)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds

    def handle(self, request: ApiRequest) -> ApiResponse:
        with self.lock:
            self.seen.append(request)
        auth = request.headers.get("authorization", "")
        prefix = "PVEAPIToken="
        token_id, _, secret = auth[len(prefix) :].partition("=")
        if not auth.startswith(prefix) or self.tokens.get(token_id) != secret:
            return pve_error(401, "authentication failure")
        if request.path == "/version":
            return _ok({"version": "9.1.1", "release": "9.1", "repoid": "0123abcd"})
        if request.path == "/cluster/resources":
            items = [
                {"id": "node/pve1", "type": "node", "node": "pve1", "status": "online"},
                {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve1",
                 "status": "running", "maxmem": 2147483648, "name": "web"},
            ]
            wanted = request.params.get("type")
            if wanted == "vm":
                items = [i for i in items if i["type"] == "qemu"]
            return _ok(items)
        if request.path == "/echo":
            return _ok({"method": request.method, "params": request.params,
                        "served_by": request.served_by})
        if request.path == "/nodes/pve1/qemu/100/migrate" and request.method == "POST":
            if token_id != "root@pam!admin":
                return pve_error(403, "Permission check failed (/vms/100, VM.Migrate)")
            return _ok("UPID:pve1:00001234:00005678:6560A000:qmigrate:100:root@pam!admin:")
        return pve_error(501, f"Method '{request.method} {request.path}' not implemented")


@pytest.fixture
def stub() -> StubCluster:
    return StubCluster()


def proxmox_client(host_port: str, token: str, verify: Any = False, timeout: float = 5.0) -> Any:
    """A proxmoxer ProxmoxAPI authenticated with `USER@REALM!NAME=SECRET`."""
    from proxmoxer import ProxmoxAPI

    full_id, _, secret = token.partition("=")
    user, _, name = full_id.partition("!")
    return ProxmoxAPI(
        host_port, user=user, token_name=name, token_value=secret,
        verify_ssl=verify, timeout=timeout,
    )


@dataclass
class ServeLab:
    """A running `python -m pvesim serve` process."""

    proc: subprocess.Popen[bytes]
    conn: dict[str, Any]
    conn_path: Path
    log_path: Path

    def host_port(self, node: str | None = None) -> str:
        url = self.conn["nodes"][node]["api_url"] if node else self.conn["api_url"]
        return str(url).removeprefix("https://")

    def client(self, token: str | None = None, node: str | None = None,
               timeout: float = 5.0) -> Any:
        token = token or f"{self.conn['token_id']}={self.conn['token_secret']}"
        return proxmox_client(self.host_port(node), token, verify=self.conn["ca_cert"],
                              timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=wait)


def start_lab(tmp: Path, scenario: Path, *extra: str, wait: float = 60.0) -> ServeLab:
    tmp.mkdir(parents=True, exist_ok=True)
    conn_path = tmp / "connection.json"
    log_path = tmp / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pvesim", "serve", "--scenario", str(scenario),
             "--connection-file", str(conn_path), *extra],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + wait
    while not conn_path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"pvesim serve exited {proc.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"no connection file after {wait} s:\n{log_path.read_text()}")
        time.sleep(0.05)
    conn = json.loads(conn_path.read_text())
    return ServeLab(proc, conn, conn_path, log_path)


@pytest.fixture
def spawn_lab() -> Iterator[Any]:
    """`start_lab`, with every lab still running at teardown killed (so a
    failing test leaves no server behind)."""
    labs: list[ServeLab] = []

    def spawn(tmp: Path, scenario: Path, *extra: str) -> ServeLab:
        lab = start_lab(tmp, scenario, *extra)
        labs.append(lab)
        return lab

    yield spawn
    for lab in labs:
        if lab.proc.poll() is None:
            lab.proc.kill()
            lab.proc.wait(timeout=10)
