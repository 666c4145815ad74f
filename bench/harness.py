"""The benchmark lab: a pvesim Simulator, optionally the real agent on it.

The agent runs exactly as in production except for two substitutions made at
the edges: its clock is the simulator's virtual clock (sleeping advances the
cluster), and its proxmoxer session has pvesim's in-process transport mounted
(`pvesim.transport.attach`), so proxmoxer's real client code, requests' real
request preparation and real JSON run against the simulated API with no
sockets. Election is `AlwaysLeader` (one agent), configuration fixed.

The baseline run advances the same scenario, with the same seed, in the same
5 s steps with nobody calling the API, so the two runs differ only by what
the agent did.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pve_balancer.agent import Agent, CycleResult  # noqa: E402
from pve_balancer.config import Config, ConfigSource  # noqa: E402
from pve_balancer.daemon import Daemon  # noqa: E402
from pve_balancer.env import PveEnvironment  # noqa: E402
from pve_balancer.leadership import AlwaysLeader  # noqa: E402
from pve_balancer.notify import Notifier  # noqa: E402
from pve_balancer.pve import ApiToken, PveClient, connect  # noqa: E402
from pvesim.clock import VirtualClock  # noqa: E402
from pvesim.cluster import Simulator  # noqa: E402
from pvesim.scenario import Scenario, load_scenario  # noqa: E402

AGENT_TOKEN = "pve-balancer@pve!agent"
WARMUP = 120.0
"""Seconds the cluster runs before the agent starts (RRD and stats exist, as
on a real cluster). The baseline gets the same warm-up."""


def scenario_of(source: Scenario | dict[str, Any] | str | Path) -> Scenario:
    if isinstance(source, Scenario):
        return source
    if isinstance(source, dict):
        return Scenario.from_dict(source)
    return load_scenario(source)


def attach_agent_client(sim: Simulator, node: str) -> PveClient:
    """The agent's real proxmoxer client, served in-process by `sim`."""
    from pvesim.transport import attach

    token = ApiToken.parse(f"{AGENT_TOKEN}={sim.tokens[AGENT_TOKEN]}")
    client = connect("https://localhost:8006", token, verify=True)
    attach(client.api, sim, node, sleep=lambda seconds: sim.advance(seconds))
    return client


def make_agent(sim: Simulator, config: Config, node: str | None = None) -> tuple[Agent, Daemon]:
    node = node or sim.node_names[0]
    client = attach_agent_client(sim, node)
    clock = VirtualClock(sim)
    env = PveEnvironment(node=node, connect=lambda: client, election=AlwaysLeader(),
                         clock=clock)
    agent = Agent(env, ConfigSource.fixed(config))
    # Whole-interval sleeps: the virtual clock needs no wake-ups for signals.
    daemon = Daemon(agent, clock, Notifier(lambda _state: True), sleep_slice=3600.0)
    return agent, daemon


@dataclass
class RunResult:
    """One run: the simulator (for metrics and plot) and what it cost."""

    sim: Simulator
    with_agent: bool
    wall_seconds: float
    cpu_seconds: float
    cycles: int = 0
    agent_requests: int = 0
    sentences: list[tuple[float, str]] = field(default_factory=list)
    started: list[dict[str, object]] = field(default_factory=list)
    overruns: int = 0

    @property
    def metrics(self) -> dict[str, Any]:
        return self.sim.metrics.to_dict()


@contextmanager
def quiet_agent_logs() -> Iterator[None]:
    """The agent logs every cycle; a benchmark keeps only its sentences.
    The logger's level is restored afterwards (tests share the process)."""
    logger = logging.getLogger("pve_balancer")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(scenario: Scenario | dict[str, Any] | str | Path, *, seed: int, duration: float,
        with_agent: bool, config: Config | None = None,
        progress: Callable[[str], None] | None = None) -> RunResult:
    """Build the scenario with `seed`, warm up, then run `duration` simulated
    seconds with or without the agent."""
    with quiet_agent_logs():
        return _run(scenario, seed=seed, duration=duration, with_agent=with_agent,
                    config=config, progress=progress)


def _run(scenario: Scenario | dict[str, Any] | str | Path, *, seed: int, duration: float,
         with_agent: bool, config: Config | None,
         progress: Callable[[str], None] | None) -> RunResult:
    sc = scenario_of(scenario)
    sim = Simulator(sc, seed=seed)
    sim.advance(WARMUP)
    w0, c0 = time.perf_counter(), time.process_time()
    result = RunResult(sim=sim, with_agent=with_agent, wall_seconds=0.0, cpu_seconds=0.0)
    if not with_agent:
        sim.advance(duration)
    else:
        config = config or Config(seed=seed)
        _agent, daemon = make_agent(sim, config)
        log_before = len(sim.request_log)
        end = sim.now + duration
        chunk = 3600.0

        def keep(cycle: CycleResult) -> None:
            result.sentences.append((sim.now, cycle.sentence))
            if cycle.fields.get("result") == "started":
                result.started.append({**cycle.fields, "time": sim.now,
                                       "sentence": cycle.sentence})

        while sim.now < end - 1e-6:
            span = min(chunk, end - sim.now)
            cycles = max(1, round(span / config.interval))
            daemon.loop(cycles, keep, trailing_sleep=True)
            if progress is not None:
                progress(f"  {(sim.now - sim.metrics.start - WARMUP) / 3600:5.1f} h simulated, "
                         f"{time.perf_counter() - w0:6.1f} s wall")
        result.cycles = daemon.cycles
        result.overruns = daemon.overruns
        result.agent_requests = sum(
            1 for r in sim.request_log[log_before:] if r.token_id == AGENT_TOKEN)
    result.wall_seconds = time.perf_counter() - w0
    result.cpu_seconds = time.process_time() - c0
    return result
