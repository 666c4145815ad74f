"""The state every part of the simulator shares: the clock's reading, the
nodes and guests, the cluster-wide configuration, and the membership rules
(who is reachable, who has quorum).

Each concern of the simulated cluster (physics, tasks, migrations, the HA
stack, backups, outages) is its own object that reads and changes this one;
`pvesim.cluster.Simulator` composes them and holds `lock` around every
public call, so nothing here locks.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from pvesim.metrics import Metrics
from pvesim.scenario import Scenario
from pvesim.specs import SimParams
from pvesim.state import Guest, Node


class World:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.lock = threading.RLock()
        self.scenario = scenario
        self.seed = seed
        self.params: SimParams = scenario.sim
        self.start_time = float(scenario.start_time)
        self.now = self.start_time
        self.cluster_name = scenario.cluster_name
        self.nodes: dict[str, Node] = {}
        self.guests: dict[int, Guest] = {}
        self.options: dict[str, Any] = dict(scenario.options)
        self.pools: dict[str, list[int]] = dict(scenario.pools)
        self.metrics = Metrics(
            cpu_max=scenario.cpu_max, memory_max=scenario.memory_max, start=self.now, now=self.now
        )
        self.config_version = 1
        self._by_node: dict[str, list[Guest]] | None = None
        # one PID sequence for the whole cluster (guest processes and task workers)
        self._pid_rng = random.Random(f"pvesim-{seed}-pids")

    @property
    def node_names(self) -> list[str]:
        return list(self.nodes)

    def new_pid(self) -> int:
        return self._pid_rng.randint(1000, 4_000_000)

    def guests_on(self, node: str) -> list[Guest]:
        if self._by_node is None:
            idx: dict[str, list[Guest]] = {n: [] for n in self.nodes}
            for g in self.guests.values():
                idx[g.node].append(g)
            self._by_node = idx
        return self._by_node[node]

    def placement_changed(self) -> None:
        """A guest was added or changed node: rebuild the per-node index."""
        self._by_node = None

    def quorate(self, name: str) -> bool:
        """Whether `name` is in a quorate partition (majority of votes)."""
        n = self.nodes.get(name)
        if n is None or not n.powered:
            return False
        if not n.network:
            return len(self.nodes) == 1
        members = sum(1 for x in self.nodes.values() if x.reachable)
        return members * 2 > len(self.nodes)
