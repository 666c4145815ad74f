"""A term's first decision: the cycles before it read the slow facts.

A new leader reads one of the slow facts (HA rules, cluster options, backup
jobs, HA manager status) per cycle and decides nothing until all are read
(`pve.SLOW_FACTS`, fail closed). Tests about what the agent decides run
those cycles first, as the daemon would.
"""

from __future__ import annotations

from pve_balancer.agent import Agent, CycleResult
from pve_balancer.pve import SLOW_FACTS

READING = "waiting for facts to be read"
"""The wording of a cycle that decided nothing because facts are still to
be read (not a failure)."""


def first_decision(agent: Agent, pause: float = 5.0) -> CycleResult:
    """Run cycles `pause` s apart (the agent's clock) until one decides;
    returns that cycle's result. Fails when the facts are not read within
    one cycle per slow fact (plus the one that decides)."""
    for _ in range(len(SLOW_FACTS) + 1):
        result = agent.run_cycle()
        if READING not in result.sentence:
            return result
        if pause:
            agent.env.sleep(pause)
    raise AssertionError(f"no decision after {len(SLOW_FACTS) + 1} cycles: {result.sentence}")
