"""The simulator's virtual time as a clock object (`now()`, `sleep()`).

A program driven in stepped mode (an agent under test, a benchmark) asks
this clock for the time, and its sleeps move the simulated cluster forward,
so a day of cluster life runs as fast as the code can compute it.
"""

from __future__ import annotations

from pvesim.cluster import Simulator


class VirtualClock:
    """Sleeping advances the cluster; `now` is the cluster's clock."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def now(self) -> float:
        return float(self.sim.now)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sim.advance(seconds)
