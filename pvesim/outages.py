"""Faults of the cluster itself: a node losing power or its cluster network,
and coming back.

(`pvesim.faults` is the other kind: faults on the way between a client and
the API, such as timeouts, resets and error answers.)

Each outage reaches every part it touches, in this order: migrations from
or to the node fail, its running tasks and backup runs end (power loss),
its guests stop (power loss) or keep running unseen (network cut), and the
HA stack schedules recovery, self-fencing and a new master.
"""

from __future__ import annotations

from pvesim.backups import Backups
from pvesim.ha import HaManager
from pvesim.migrations import Migrations
from pvesim.tasks import Tasks
from pvesim.world import World


class Outages:
    def __init__(
        self,
        world: World,
        tasks: Tasks,
        migrations: Migrations,
        backups: Backups,
        ha: HaManager,
    ) -> None:
        self.w = world
        self.tasks = tasks
        self.migrations = migrations
        self.backups = backups
        self.ha = ha

    def power_off(self, name: str) -> None:
        """Hard power loss of a node."""
        w = self.w
        node = w.nodes[name]
        if not node.powered:
            return
        node.powered = False
        self.migrations.abort_touching(name)
        self.tasks.end_running_on(name, "unexpected status")
        self.backups.drop_node(name)
        lost: list[int] = []
        for g in w.guests_on(name):
            was = g.running
            g.status = "stopped"
            g.live_cpu = g.live_demand = 0.0
            g.live_mem = 0
            if g.lock == "backup":
                g.lock = None
            if g.ha and was:
                lost.append(g.vmid)
        self.ha.node_died(name, lost)
        w.config_version += 1

    def power_on(self, name: str) -> None:
        w = self.w
        node = w.nodes[name]
        if node.powered:
            return
        node.powered = True
        node.boot_time = w.now
        node.next_publish = w.now + node.stat_phase + 1.0
        node.pub_loadavg = 0.0
        self.ha.node_powered_on(name)
        w.config_version += 1

    def cut_network(self, name: str) -> None:
        """The node loses its cluster network: no quorum, unreachable from
        the others; its guests keep running until the HA watchdog fences it."""
        node = self.w.nodes[name]
        if not node.network:
            return
        node.network = False
        self.migrations.abort_touching(name)
        self.ha.node_isolated(name)

    def restore_network(self, name: str) -> None:
        node = self.w.nodes[name]
        if node.network:
            return
        node.network = True
        self.ha.node_rejoined(name)
