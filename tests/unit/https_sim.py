"""A simulated cluster served over real, verified HTTPS from this process.

For tests of the command line and of the agent's error reporting that need
the real TLS and HTTP path (certificate verification, a refused token) but
not a second process: pvesim's `NodeServer` in a thread on 127.0.0.1, the
simulator's clock aligned with the wall clock at start and then moved only
by the test (`sim.advance`), and a PVE root laid out as on a node: the CA,
the agent's token file and, if given, balancer.yaml.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvesim.cluster import Simulator
from pvesim.faults import FaultInjector
from pvesim.scenario import Scenario
from pvesim.server import NodeServer
from pvesim.tls import ensure_pki
from simlab.inprocess import AGENT_TOKEN, WARMUP


@dataclass
class HttpsSim:
    sim: Simulator
    url: str
    root: Path
    """A PVE root for `--pve-root`: CA, token file, maybe balancer.yaml."""
    ca: Path
    faults: FaultInjector
    """Between the listener and the simulator (no rules until a test adds some)."""

    def cli_args(self, *argv: str) -> list[str]:
        return ["--pve-root", str(self.root), "--node", "pve1", "--api-url", self.url, *argv]


@contextlib.contextmanager
def https_sim(tmp: Path, scenario: dict[str, Any], *, config: str | None = None,
              token: str | None = None) -> Iterator[HttpsSim]:
    """`scenario`'s pve1 API over HTTPS; the token file holds the agent's
    token (or `token`, e.g. one with a wrong secret)."""
    sim = Simulator(Scenario.from_dict({**scenario, "start_time": int(time.time() - WARMUP)}))
    sim.advance(WARMUP)
    pki = ensure_pki(tmp / "pki", ["pve1"])
    root = tmp / "root"
    (root / "priv").mkdir(parents=True, exist_ok=True)
    (root / "pve-root-ca.pem").write_bytes(pki.ca_cert_path.read_bytes())
    line = token if token is not None else f"{AGENT_TOKEN}={sim.tokens[AGENT_TOKEN]}"
    token_file = root / "priv" / "pve-balancer.token"
    token_file.write_text(line + "\n")
    token_file.chmod(0o600)
    if config is not None:
        (root / "balancer.yaml").write_text(config)
    faults = FaultInjector(sim)
    server = NodeServer("pve1", faults, pki.nodes["pve1"])
    server.start()
    try:
        yield HttpsSim(sim=sim, url=server.url, root=root, ca=root / "pve-root-ca.pem",
                       faults=faults)
    finally:
        server.stop()
