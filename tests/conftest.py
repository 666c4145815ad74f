"""Shared fixtures: a simulated cluster with the real agent attached.

`make_lab(scenario)` builds a `pvesim` Simulator, opens the agent's real
proxmoxer client and mounts the simulator on it in-process (real client code,
real JSON, no sockets), and drives the real daemon loop in the simulator's
virtual time. Tests then assert on the cycle sentences and on the
simulator's request log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pve_balancer.agent import Agent, CycleResult
from pve_balancer.config import Config, ConfigSource
from pve_balancer.daemon import Daemon
from pve_balancer.env import PveEnvironment
from pve_balancer.leadership import AlwaysLeader, Election
from pve_balancer.notify import Notifier
from pve_balancer.pve import ApiToken, PveClient, connect
from pve_balancer.status import StatusWriter

AGENT_TOKEN = "pve-balancer@pve!agent"
GIB = 1 << 30


@dataclass
class Lab:
    """A simulated cluster, the agent on node `node`, and what happened."""

    sim: Any
    agent: Agent
    daemon: Daemon
    client: PveClient
    node: str
    sentences: list[tuple[float, str]] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    fields: list[dict[str, object]] = field(default_factory=list)
    started_at: float = 0.0
    faults: Any = None

    def run(self, seconds: float) -> list[str]:
        """Run the daemon loop for `seconds` of virtual time; returns the
        sentences of these cycles."""
        interval = self.daemon.interval()
        cycles = max(1, round(seconds / interval))
        start = len(self.sentences)

        def keep(result: CycleResult) -> None:
            self.sentences.append((self.sim.now, result.sentence))
            self.fields.append(dict(result.fields))

        self.daemon.loop(cycles, keep, trailing_sleep=True)
        return [s for _, s in self.sentences[start:]]

    def run_until(self, predicate: Callable[[], bool], limit: float,
                  step: float = 5.0) -> bool:
        deadline = self.sim.now + limit
        while self.sim.now < deadline:
            self.run(step)
            if predicate():
                return True
        return False

    def requests(self, method: str | None = None, contains: str = "",
                 since: float | None = None) -> list[Any]:
        return [r for r in self.sim.request_log
                if (method is None or r.method == method) and contains in r.path
                and (since is None or r.time >= since)]

    def started(self) -> list[dict[str, object]]:
        """Structured fields of the cycles that started a migration."""
        return [f for f in self.fields if f.get("result") == "started"]

    def migrate_posts(self) -> list[Any]:
        return [r for r in self.sim.request_log
                if r.method == "POST" and r.path.endswith("/migrate")]

    def node_of(self, vmid: int) -> str:
        return str(self.sim.guest(vmid).node)

    def mem_fraction(self, node: str) -> float:
        n = next(x for x in self.client.sample(self.sim.now)[0].nodes if x.name == node)
        return n.mem_fraction


def scenario_from(data: dict[str, Any] | str | Path) -> Any:
    from pvesim.scenario import Scenario, load_scenario

    if isinstance(data, dict):
        return Scenario.from_dict(data)
    return load_scenario(data)


def attach_client(sim: Any, node: str, token_id: str = AGENT_TOKEN,
                  handler: Any = None) -> PveClient:
    """The agent's real client, its requests served in-process by `handler`
    (the simulator itself unless a fault injector wraps it)."""
    from pvesim.transport import attach

    token = ApiToken.parse(f"{token_id}={sim.tokens[token_id]}")
    client = connect("https://localhost:8006", token, verify=True)
    attach(client.api, handler if handler is not None else sim, node,
           sleep=lambda seconds: sim.advance(seconds))
    return client


def make_lab(scenario: dict[str, Any] | str | Path, config: Config | None = None, *,
             node: str | None = None, seed: int = 0, election: Election | None = None,
             status_dir: Path | None = None, warmup: float = 120.0,
             faults: bool = False) -> Lab:
    """`warmup`: seconds the cluster runs before the agent starts, as on a
    real cluster whose statistics and RRD already exist."""
    # pvesim is imported here, not at module level: the package build runs
    # a few unit tests with this conftest and without the simulator.
    from pvesim.clock import VirtualClock
    from pvesim.cluster import Simulator

    sim = Simulator(scenario_from(scenario), seed=seed)
    if warmup > 0:
        sim.advance(warmup)
    node = node or sim.node_names[0]
    injector = None
    if faults:
        from pvesim.faults import FaultInjector

        injector = FaultInjector(sim, seed=seed)
    client = attach_client(sim, node, handler=injector)
    clock = VirtualClock(sim)
    status = StatusWriter(status_dir / "pve-balancer" / "status.json", node) \
        if status_dir is not None else None
    env = PveEnvironment(node=node, connect=lambda: client, election=election or AlwaysLeader(),
                         clock=clock, status=status)
    agent = Agent(env, ConfigSource.fixed(config or Config(seed=1)))
    notes: list[str] = []

    def send(state: str) -> bool:
        notes.append(state)
        return True

    # Whole-interval sleeps: the virtual clock needs no wake-ups for signals.
    daemon = Daemon(agent, clock, Notifier(send), sleep_slice=3600.0)
    return Lab(sim=sim, agent=agent, daemon=daemon, client=client, node=node,
               notifications=notes, started_at=sim.now, faults=injector)


def nodes_spec(count: int, cores: int = 16, memory: str = "64GiB",
               prefix: str = "pve") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i + 1}", "cores": cores, "memory": memory,
             "base_memory": "4GiB"} for i in range(count)]


def guest_spec(vmid: int, node: str, cpu: float = 0.2, mem: str = "4GiB", cores: int = 4,
               memory: str = "4GiB", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"vmid": vmid, "node": node, "name": f"vm{vmid}", "cores": cores,
                            "memory": memory, "demand": {"cpu": cpu, "mem": mem}}
    spec.update(extra)
    return spec
