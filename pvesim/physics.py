"""Physics and pvestatd: what each node delivers, and what the API shows.

Within a step demand is constant and CPU is shared fairly: when a node's
guests want more cores than it has, each gets at most an equal share of
what is left (max-min fair share), so small guests are served first. Memory
is what the running guests touched plus their process overhead plus the
copies of incoming migrations. The live values feed the metrics; a
pvestatd round per node (`stat_interval`, phase-shifted per node) publishes
the averages since the last round, and only published values reach the API.

Pressure stall information follows from the same step: a guest's CPU stall
share is the part of its demand the fair share did not deliver, a node's the
part of all demand it did not deliver; memory stall is the share of touched
memory beyond the node's RAM (overcommit), felt by every task on the node.
"""

from __future__ import annotations

from pvesim.state import MIB, Guest, Node, Stall
from pvesim.world import World

# RRD columns after the usage figures, in this order (pvesim.api_nodes and
# pvesim.api_guests read them by position)
NODE_PSI = ("pressurecpusome", "pressurememorysome", "pressurememoryfull")
GUEST_PSI = ("pressurecpusome", "pressurecpufull", "pressurememorysome", "pressurememoryfull")


def _node_psi(s: Stall) -> list[float]:
    return [s.cpu_some, s.mem_some, s.mem_full]


def _guest_psi(s: Stall) -> list[float]:
    return [s.cpu_some, s.cpu_full, s.mem_some, s.mem_full]


def memhost(g: Guest) -> int:
    """Host-side memory of a running guest: what it touched plus the QEMU
    process overhead (LXC has none)."""
    if g.type == "lxc":
        return g.live_mem
    return g.live_mem + 24 * MIB + g.maxmem // 128


class Physics:
    def __init__(self, world: World) -> None:
        self.w = world

    def step(self, t: float, dt: float, incoming: dict[str, int]) -> None:
        """Deliver CPU and memory over [t, t + dt); `incoming` is the memory
        migrations are copying onto each target node."""
        w = self.w
        samples: dict[str, tuple[float, float]] = {}
        for name, node in w.nodes.items():
            if not node.powered:
                node.live_cpu = node.live_demand = 0.0
                node.live_mem = 0
                w.metrics.record_node(t, dt, name, 0.0, 0.0, 0.0, 0.0, 0.0, False)
                samples[name] = (0.0, 0.0)
                continue
            guests = [g for g in w.guests_on(name) if g.status == "running"]
            demands: list[float] = []
            mem = node.base_mem + incoming.get(name, 0)
            for g in guests:
                c, gm = g.demand.at(t)
                c = c if c < g.vcpus else float(g.vcpus)
                gm = gm if gm < g.maxmem else float(g.maxmem)
                g.live_demand = c
                g.live_mem = int(gm)
                demands.append(c)
                mem += memhost(g)
            total = sum(demands)
            cap = float(node.cores)
            if total <= cap:
                for g, c in zip(guests, demands, strict=True):
                    g.live_cpu = c
                delivered = total
            else:
                # max-min fair share (water filling)
                order = sorted(range(len(guests)), key=demands.__getitem__)
                remaining = cap
                left = len(order)
                for i in order:
                    share = remaining / left
                    got = demands[i] if demands[i] < share else share
                    guests[i].live_cpu = got
                    remaining -= got
                    left -= 1
                delivered = cap
            over = max(0, mem - node.memory)
            # memory overcommit: the share of touched memory that does not
            # fit stalls every task on the node alike (reclaim, swap-in)
            mem_stall = over / mem if mem > 0 else 0.0
            for g, c in zip(guests, demands, strict=True):
                g.acc_cpu += g.live_cpu * dt
                g.acc_time += dt
                g.acc_stall.add(dt, (c - g.live_cpu) / c if c > 0 else 0.0, mem_stall)
            node.acc_stall.add(dt, (total - delivered) / total if total > 0 else 0.0, mem_stall)
            node.live_demand = total
            node.live_cpu = delivered
            node.live_mem = mem
            node.acc_cpu += delivered * dt
            node.acc_time += dt
            starved = (total - delivered) * dt
            cpu_frac = delivered / cap
            mem_frac = mem / node.memory
            w.metrics.record_node(
                t, dt, name, cpu_frac, mem_frac, starved, float(over), delivered, True
            )
            samples[name] = (cpu_frac, mem_frac)
        w.metrics.sample(t, samples)
        w.metrics.now = t + dt

    def prefill_rrd(self, minutes: int = 70) -> None:
        """History before the run starts, so a client seeding from
        `rrddata?timeframe=hour` finds the last hour as on a running cluster.
        Demand models are functions of time, so the past is well defined;
        contention is applied per node as in the live physics."""
        w = self.w
        for k in range(minutes, 0, -1):
            t = w.now - 60 * k + 30
            for node in w.nodes.values():
                if not node.powered:
                    continue
                gs = [g for g in w.guests_on(node.name) if g.running]
                dem = [min(g.demand.at(t)[0], float(g.vcpus)) for g in gs]
                total = sum(dem)
                scale = 1.0 if total <= node.cores else node.cores / total
                mem = float(node.base_mem)
                rows = []
                for g, c in zip(gs, dem, strict=True):
                    gmem = min(g.demand.at(t)[1], float(g.maxmem))
                    host = gmem + (0 if g.type == "lxc" else 24 * MIB + g.maxmem // 128)
                    mem += host
                    rows.append((g, c, gmem, host))
                mem_stall = max(0.0, mem - node.memory) / mem if mem > 0 else 0.0
                # proportional scaling, not water filling: every guest waits alike
                cpu_stall = 1.0 - scale
                for g, c, gmem, host in rows:
                    psi = Stall()
                    psi.add(1.0, cpu_stall if c > 0 else 0.0, mem_stall)
                    g.rrd.add(t, [c * scale / g.vcpus, gmem, host,
                                  *_guest_psi(psi.percent_over(1.0))])
                psi = Stall()
                psi.add(1.0, cpu_stall if total > 0 else 0.0, mem_stall)
                node.rrd.add(t, [min(total, node.cores) / node.cores, mem, total,
                                 *_node_psi(psi.percent_over(1.0))])

    def publish(self, node: Node, t: float) -> None:
        """A pvestatd round on `node`: what the API will show until the next."""
        w = self.w
        if node.acc_time > 0:
            node.pub_cpu = min(1.0, node.acc_cpu / node.acc_time / node.cores)
        else:
            node.pub_cpu = node.live_cpu / node.cores
        if node.live_mem == 0:
            node.live_mem = node.base_mem + sum(
                memhost(g) for g in w.guests_on(node.name) if g.running
            )
        node.pub_mem = node.live_mem
        # loadavg ≈ runnable threads: delivered plus waiting demand
        node.pub_loadavg = node.pub_loadavg * 0.85 + node.live_demand * 0.15
        node.pub_time = t
        node.pub_stall = node.acc_stall.percent_over(node.acc_time)
        node.acc_stall = Stall()
        node.acc_cpu = node.acc_time = 0.0
        node.rrd.add(t, [node.pub_cpu, float(node.pub_mem), node.pub_loadavg,
                         *_node_psi(node.pub_stall)])
        for g in w.guests_on(node.name):
            if g.running:
                g.pub_cpu = (g.acc_cpu / g.acc_time / g.vcpus) if g.acc_time > 0 else 0.0
                g.pub_mem = g.live_mem
                g.pub_memhost = memhost(g)
                g.pub_stall = g.acc_stall.percent_over(g.acc_time)
            else:
                g.pub_cpu = 0.0
                g.pub_mem = g.pub_memhost = 0
                g.pub_stall = Stall()
            g.acc_cpu = g.acc_time = 0.0
            g.acc_stall = Stall()
            g.pub_time = t
            g.rrd.add(t, [g.pub_cpu, float(g.pub_mem), float(g.pub_memhost),
                          *_guest_psi(g.pub_stall)])
        if int(t) % 3600 < w.params.stat_interval:
            keep = t - w.params.rrd_keep
            node.rrd.prune(keep)
            for g in w.guests_on(node.name):
                g.rrd.prune(keep)

    def wakes(self) -> list[float]:
        """The next pvestatd round of every powered node."""
        return [n.next_publish for n in self.w.nodes.values() if n.powered]

    def due(self, t: float) -> None:
        """Run the pvestatd rounds due at `t`."""
        eps = 1e-9
        for n in self.w.nodes.values():
            if n.powered and n.next_publish <= t + eps:
                self.publish(n, t)
                n.next_publish += self.w.params.stat_interval
                if n.next_publish <= t:
                    n.next_publish = t + self.w.params.stat_interval
