"""The benchmark runs: a pvesim Simulator, optionally the real agent on it.

The agent side is the in-process lab shared with the tests
(`simlab.inprocess`): the real agent and daemon loop, the simulator's virtual
clock, proxmoxer with pvesim's in-process transport mounted (real client
code, real request preparation, real JSON, no sockets), `AlwaysLeader`, a
fixed configuration.

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

from pve_balancer.config import Config  # noqa: E402
from pvesim.cluster import Simulator  # noqa: E402
from simlab.inprocess import (  # noqa: E402
    AGENT_TOKEN,
    WARMUP,
    InProcessLab,
    ScenarioSource,
    simulator,
)

__all__ = ["AGENT_TOKEN", "WARMUP", "RunResult", "quiet_agent_logs", "run"]


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


def run(scenario: ScenarioSource, *, seed: int, duration: float,
        with_agent: bool, config: Config | None = None,
        progress: Callable[[str], None] | None = None) -> RunResult:
    """Build the scenario with `seed`, warm up, then run `duration` simulated
    seconds with or without the agent."""
    with quiet_agent_logs():
        return _run(scenario, seed=seed, duration=duration, with_agent=with_agent,
                    config=config, progress=progress)


def _run(scenario: ScenarioSource, *, seed: int, duration: float,
         with_agent: bool, config: Config | None,
         progress: Callable[[str], None] | None) -> RunResult:
    sim = simulator(scenario, seed=seed, warmup=WARMUP)
    w0, c0 = time.perf_counter(), time.process_time()
    result = RunResult(sim=sim, with_agent=with_agent, wall_seconds=0.0, cpu_seconds=0.0)
    if not with_agent:
        sim.advance(duration)
    else:
        log_before = len(sim.request_log)
        lab = InProcessLab.attach(sim, config or Config(seed=seed))
        end = sim.now + duration
        chunk = 3600.0
        while sim.now < end - 1e-6:
            lab.run(min(chunk, end - sim.now))
            if progress is not None:
                progress(f"  {(sim.now - sim.metrics.start - WARMUP) / 3600:5.1f} h simulated, "
                         f"{time.perf_counter() - w0:6.1f} s wall")
        result.sentences = lab.sentences
        result.started = [{**f, "time": t, "sentence": s}
                          for (t, s), f in zip(lab.sentences, lab.fields, strict=True)
                          if f.get("result") == "started"]
        result.cycles = lab.daemon.cycles
        result.overruns = lab.daemon.overruns
        result.agent_requests = sum(
            1 for r in sim.request_log[log_before:] if r.token_id == AGENT_TOKEN)
    result.wall_seconds = time.perf_counter() - w0
    result.cpu_seconds = time.process_time() - c0
    return result
