"""The in-process lab: a pvesim Simulator with the real agent attached.

The agent runs as in production except at two edges: its clock is the
simulator's virtual clock (sleeping advances the cluster), and its proxmoxer
session has pvesim's in-process transport mounted, so proxmoxer's real
client code, requests' real request preparation and real JSON run against
the simulated API with no sockets. Election is `AlwaysLeader` unless a test
passes another one; the configuration is fixed.

`make_lab(scenario)` builds the simulator, warms it up and attaches the
agent; `InProcessLab.attach(sim, config)` attaches the agent to a simulator
built elsewhere (the benchmark builds its baseline run the same way and
times only what follows). `InProcessLab.run` drives the real daemon loop and
keeps each cycle's sentence with its virtual time, which is what tests and
benchmarks judge.

Everything that builds the agent's side (client, clock, status writer,
election, `Agent`, `Daemon`) is in `_start_agent`, so a change of the
agent's constructor is made in one place.
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
from pvesim.clock import VirtualClock
from pvesim.cluster import Simulator
from pvesim.faults import FaultInjector
from pvesim.protocol import ApiHandler
from pvesim.scenario import Scenario, load_scenario
from pvesim.transport import attach

AGENT_TOKEN = "pve-balancer@pve!agent"
WARMUP = 120.0
"""Seconds the cluster runs before the agent starts, as on a real cluster
whose statistics and RRD already exist."""

ScenarioSource = Scenario | dict[str, Any] | str | Path


def scenario_of(source: ScenarioSource) -> Scenario:
    """A scenario from an object, a dict (inline test setups) or a file."""
    if isinstance(source, Scenario):
        return source
    if isinstance(source, dict):
        return Scenario.from_dict(source)
    return load_scenario(source)


def simulator(source: ScenarioSource, *, seed: int = 0, warmup: float = WARMUP) -> Simulator:
    """The scenario's simulator with `seed`, run for `warmup` seconds."""
    sim = Simulator(scenario_of(source), seed=seed)
    if warmup > 0:
        sim.advance(warmup)
    return sim


def attach_client(sim: Simulator, node: str, token_id: str = AGENT_TOKEN,
                  handler: ApiHandler | None = None) -> PveClient:
    """The agent's real client, its requests served in-process by `handler`
    (the simulator itself unless a fault injector or a recorder wraps it) as
    if sent to `node`'s API."""
    token = ApiToken.parse(f"{token_id}={sim.tokens[token_id]}")
    client = connect("https://localhost:8006", token, verify=True)
    attach(client.api, handler if handler is not None else sim, node,
           sleep=lambda seconds: sim.advance(seconds))
    return client


@dataclass(frozen=True)
class _AgentSide:
    agent: Agent
    daemon: Daemon
    client: PveClient


def _start_agent(sim: Simulator, config: Config, *, node: str, election: Election,
                 status_dir: Path | None, handler: ApiHandler | None,
                 notify: Callable[[str], bool]) -> _AgentSide:
    """The one place that builds the agent and its daemon for a lab."""
    client = attach_client(sim, node, handler=handler)
    clock = VirtualClock(sim)
    status = StatusWriter(status_dir / "pve-balancer" / "status.json", node) \
        if status_dir is not None else None
    env = PveEnvironment(node=node, connect=lambda: client, election=election, clock=clock,
                         status=status)
    agent = Agent(env, ConfigSource.fixed(config))
    # Whole-interval sleeps: the virtual clock needs no wake-ups for signals.
    daemon = Daemon(agent, clock, Notifier(notify), sleep_slice=3600.0)
    return _AgentSide(agent=agent, daemon=daemon, client=client)


@dataclass
class InProcessLab:
    """A simulated cluster, the agent on node `node`, and what happened:
    each cycle's (virtual time, sentence) and structured fields, and the
    states sent to the service manager."""

    sim: Simulator
    agent: Agent
    daemon: Daemon
    client: PveClient
    node: str
    sentences: list[tuple[float, str]] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    fields: list[dict[str, object]] = field(default_factory=list)
    started_at: float = 0.0
    faults: FaultInjector | None = None

    @classmethod
    def attach(cls, sim: Simulator, config: Config | None = None, *, node: str | None = None,
               election: Election | None = None, status_dir: Path | None = None,
               faults_seed: int | None = None) -> InProcessLab:
        """The agent on `node` (default: the first) of a running simulator.
        `config` defaults to the defaults with seed 1; `status_dir` makes it
        publish status.json there; `faults_seed` puts a fault injector
        between the agent and the API."""
        node = node or sim.node_names[0]
        injector = FaultInjector(sim, seed=faults_seed) if faults_seed is not None else None
        notes: list[str] = []

        def send(state: str) -> bool:
            notes.append(state)
            return True

        side = _start_agent(sim, config or Config(seed=1), node=node,
                            election=election or AlwaysLeader(), status_dir=status_dir,
                            handler=injector, notify=send)
        return cls(sim=sim, agent=side.agent, daemon=side.daemon, client=side.client,
                   node=node, notifications=notes, started_at=sim.now, faults=injector)

    def run(self, seconds: float) -> list[str]:
        """Run the daemon loop for `seconds` of virtual time; returns the
        sentences of these cycles."""
        cycles = max(1, round(seconds / self.daemon.interval()))
        start = len(self.sentences)

        def keep(result: CycleResult) -> None:
            self.sentences.append((self.sim.now, result.sentence))
            self.fields.append(dict(result.fields))

        self.daemon.loop(cycles, keep, trailing_sleep=True)
        return [s for _, s in self.sentences[start:]]

    def run_until(self, predicate: Callable[[], bool], limit: float,
                  step: float = 5.0) -> bool:
        """Run in `step`s until `predicate()` holds or `limit` seconds passed."""
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
        # slow=0: the agent's client, so leave its slow facts as they are
        n = next(x for x in self.client.sample(self.sim.now, 0)[0].nodes if x.name == node)
        return n.mem_fraction


def make_lab(scenario: ScenarioSource, config: Config | None = None, *,
             node: str | None = None, seed: int = 0, election: Election | None = None,
             status_dir: Path | None = None, warmup: float = WARMUP,
             faults: bool = False) -> InProcessLab:
    """The scenario's simulator (seed `seed`, warmed up for `warmup` s) with
    the agent attached; see `InProcessLab.attach` for the rest."""
    sim = simulator(scenario, seed=seed, warmup=warmup)
    return InProcessLab.attach(sim, config, node=node, election=election,
                               status_dir=status_dir, faults_seed=seed if faults else None)
