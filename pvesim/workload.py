"""The nodes and guests a scenario describes, and what each guest demands.

Guests come from the scenario's list and from `generate_from_traces`, whose
expansion happens here rather than when the file is read because it depends
on the run's seed: which trace VMs are picked, where they are placed, where
in its trace each one starts and which are HA-managed. The draws come from
their own random sequence, in a fixed order, so a seed names one cluster.
"""

from __future__ import annotations

import random

from pvesim.demand import ConstantDemand, Demand, StepDemand, TraceDemand
from pvesim.scenario import Scenario
from pvesim.specs import GuestSpec, ScenarioError
from pvesim.state import Guest, Node
from pvesim.traces import Trace, available_vms, load_traces
from pvesim.world import World


def build_nodes(w: World, scenario: Scenario) -> None:
    for i, ns in enumerate(scenario.nodes):
        node = Node(
            name=ns.name,
            nodeid=i + 1,
            cores=ns.cores,
            memory=ns.memory,
            base_mem=ns.base_memory,
            ip=f"10.10.10.{11 + i}",
            powered=ns.powered,
            network=ns.network,
            maintenance=ns.maintenance,
            boot_time=w.now - 86400 * (3 + i),
            # pvestatd rounds are not aligned across nodes
            stat_phase=(i * 3.7) % w.params.stat_interval,
        )
        node.next_publish = w.now + node.stat_phase
        w.nodes[ns.name] = node
        w.metrics.add_node(ns.name)


def _make_demand(w: World, spec: GuestSpec, traces: dict[int, Trace]) -> Demand:
    d = spec.demand
    mem = d.mem if d.mem is not None else spec.memory // 2
    start = w.start_time
    if d.kind == "trace":
        return TraceDemand(traces[d.trace_vm], start, d.offset, d.cpu_scale, d.mem_scale)
    if d.kind == "steps":
        return StepDemand(
            d.cpu,
            float(mem),
            [(start + at, c, None if m is None else float(m)) for at, c, m in d.steps],
            [
                (start + a, start + b, c, None if m is None else float(m))
                for a, b, c, m in d.spikes
            ],
        )
    return ConstantDemand(d.cpu, float(mem))


def build_guests(w: World, scenario: Scenario) -> None:
    sc = scenario
    specs = list(sc.guests)
    trace_vms = {g.demand.trace_vm for g in specs if g.demand.kind == "trace"}
    gen = sc.generate
    gen_rng = random.Random(f"pvesim-{w.seed if gen is None or gen.seed is None else gen.seed}-gen")
    chosen: list[int] = []
    if gen is not None:
        if gen.vm_ids:
            chosen = list(gen.vm_ids)[: gen.count]
        else:
            pool = available_vms(sc.trace_file)
            if gen.count > len(pool):
                raise ScenarioError(
                    f"generate_from_traces.count: {gen.count} > {len(pool)} VMs in the trace"
                )
            chosen = sorted(gen_rng.sample(pool, gen.count))
        trace_vms |= set(chosen)
    traces = load_traces(sorted(trace_vms), sc.trace_file) if trace_vms else {}
    for spec in specs:
        _add_guest(w, spec, _make_demand(w, spec, traces))
    if gen is not None:
        nodes = gen.nodes or w.node_names
        vmid = gen.vmid_start
        for i, vm in enumerate(chosen):
            while vmid in w.guests:
                vmid += 1
            tr = traces[vm]
            node = (
                nodes[i % len(nodes)] if gen.placement == "round_robin" else gen_rng.choice(nodes)
            )
            offset = gen_rng.uniform(0, tr.span) if gen.random_offset else 0.0
            maxmem = tr.mem_capacity
            if gen.max_memory is not None:
                maxmem = min(maxmem, gen.max_memory)
            ha = gen_rng.random() < gen.ha_fraction
            spec = GuestSpec(
                vmid=vmid,
                node=node,
                name=f"{gen.name_prefix}-{vm:03d}",
                cores=tr.vcpus,
                memory=maxmem,
                ha=ha,
            )
            demand = TraceDemand(tr, w.start_time, offset, gen.cpu_scale, gen.mem_scale)
            _add_guest(w, spec, demand)
            vmid += 1


def _add_guest(w: World, spec: GuestSpec, demand: Demand) -> None:
    g = Guest(
        vmid=spec.vmid,
        name=spec.name,
        type=spec.type,
        node=spec.node,
        vcpus=spec.cores,
        maxmem=spec.memory,
        demand=demand,
        status="stopped" if spec.template else spec.status,
        template=spec.template,
        lock=spec.lock,
        tags=list(spec.tags),
        ha=spec.ha,
        local_disks=list(spec.local_disks),
        local_resources=list(spec.local_resources),
        pool=spec.pool,
        start_time=w.now - 3600 * 24,
        pid=w.new_pid(),
    )
    if not w.nodes[g.node].powered:
        g.status = "stopped"
    w.guests[g.vmid] = g
    if g.pool:
        w.pools.setdefault(g.pool, [])
        if g.vmid not in w.pools[g.pool]:
            w.pools[g.pool].append(g.vmid)
    w.placement_changed()


def change_demand(g: Guest, now: float, cpu: float | None, mem: float | None) -> None:
    """A guest's demand from `now` on (replaces trace replay)."""
    cur_c, cur_m = g.demand.at(now)
    if isinstance(g.demand, StepDemand):
        g.demand.add_step(now, cpu, mem)
    else:
        g.demand = StepDemand(cur_c if cpu is None else cpu, cur_m if mem is None else mem)
