"""Invariants of `decide` over random clusters: whatever the input, the
decision never breaks a rule, never raises, and repeats for the same seed.

Each invariant is recomputed here from the snapshot, independently of the
policy's own helpers, so a policy bug cannot hide behind shared code.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pve_balancer.config import Config
from pve_balancer.model import (
    AffinityRule,
    Decision,
    Estimates,
    Guest,
    Migration,
    Mode,
    Node,
    Snapshot,
)
from pve_balancer.policy import (
    PROACTIVE_HYSTERESIS,
    PROACTIVE_REST,
    RETURN_BLOCK,
    RETURN_MEMORY,
    SATURATED,
    PolicyState,
    decide,
)

GIB = 1 << 30
NOW = 5000.0
NAMES = ("pve1", "pve2", "pve3", "pve4", "pve5")
TAG = "pve-balancer-exclude"
EPS = 1e-9

PROPERTY = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def guests_on(draw: st.DrawFn, node: str, vmids: list[int]) -> list[Guest]:
    result = []
    for vmid in vmids:
        result.append(
            Guest(
                vmid=vmid,
                name=f"vm{vmid}",
                node=node,
                kind=draw(st.sampled_from(["qemu"] * 5 + ["lxc"])),
                status=draw(st.sampled_from(["running"] * 5 + ["stopped"])),
                cpu=draw(fraction),
                maxcpu=draw(st.sampled_from([4, 8, 2, 16, 1])),
                mem=draw(st.integers(0, 24)) * GIB // 2,
                maxmem=32 * GIB,
                template=draw(st.integers(0, 7)) == 7,
                lock=draw(st.sampled_from([None] * 10 + ["backup", "suspended"])),
                tags=draw(st.sampled_from([frozenset()] * 6 + [frozenset({"db"}),
                                           frozenset({TAG}), frozenset({TAG.upper()})])),
                ha_managed=draw(st.booleans()),
            )
        )
    return result


@st.composite
def clusters(
    draw: st.DrawFn, min_first: int = 0
) -> tuple[tuple[Node, ...], tuple[Guest, ...]]:
    """Mostly coherent clusters (node figures add up from their guests plus a
    base load), sometimes arbitrary figures; a few guests on unknown nodes."""
    count = draw(st.sampled_from([3, 2, 4, 5, 1]))
    free = list(range(100, 100 + 10 * 6 + 1))
    nodes: list[Node] = []
    guests: list[Guest] = []
    for name in [*NAMES[:count], "gone"]:
        size = draw(st.sampled_from([5, 8, 3, 10, 0, 1])) if name != "gone" else draw(
            st.integers(0, 1))
        if name == "pve1":
            size = max(size, min_first)
        mine = draw(guests_on(name, free[:size]))
        del free[:size]
        guests += mine
        if name == "gone":
            continue
        maxmem = draw(st.sampled_from([64 * GIB, 64 * GIB, 256 * GIB, 16 * GIB, 0]))
        maxcpu = draw(st.sampled_from([16, 16, 64, 4, 0]))
        running = [g for g in mine if g.status == "running"]
        if draw(st.integers(0, 4)) < 4 and maxcpu > 0:
            cpu = min(1.0, draw(st.floats(0.0, 0.5)) + sum(g.cpu * g.maxcpu for g in running)
                      / maxcpu)
            mem = min(maxmem, draw(st.integers(0, 40)) * GIB + sum(g.mem for g in running))
        else:
            cpu, mem = draw(fraction), int(draw(fraction) * maxmem)
        nodes.append(
            Node(
                name=name,
                online=draw(st.integers(0, 9)) < 9,
                cpu=cpu,
                maxcpu=maxcpu,
                mem=mem,
                maxmem=maxmem,
                maintenance=draw(st.integers(0, 9)) == 9,
            )
        )
    return tuple(nodes), tuple(guests)


@st.composite
def rules(draw: st.DrawFn, vmids: list[int]) -> tuple[AffinityRule, ...]:
    if not vmids:
        return ()
    result = []
    if draw(st.booleans()):
        # one wide anti-affinity rule, so that it often constrains the target
        wide = frozenset(draw(st.lists(st.sampled_from(vmids), min_size=2, max_size=16)))
        result.append(AffinityRule("apart", "resource-affinity", wide, affinity="negative"))
    for i in range(draw(st.integers(0, 3))):
        members = frozenset(draw(st.lists(st.sampled_from(vmids), min_size=1, max_size=3)))
        kind = draw(st.sampled_from(["node-affinity", "resource-affinity"]))
        result.append(
            AffinityRule(
                rule_id=f"r{i}",
                kind=kind,
                vmids=members,
                nodes=frozenset({"pve1"}),
                affinity=draw(st.sampled_from(["positive", "negative", "negative"])),
                enabled=draw(st.integers(0, 4)) < 4,
            )
        )
    return tuple(result)


def _calm(node: Node) -> Node:
    """The same node with CPU well below any maximum and memory below 0.85."""
    return replace(node, cpu=node.cpu * 0.4, mem=min(node.mem, int(node.maxmem * 0.85)))


@st.composite
def situations(
    draw: st.DrawFn, shape: str = "any"
) -> tuple[Snapshot, Estimates, Config, PolicyState]:
    """A random cluster with random rules, estimates, config and state.
    `calm` keeps CPU low and the maxima high so proactive balancing is
    reached; `hot` makes the first node a CPU hotspot among cooler 16-core
    peers, so CPU mode's choices (busiest kept, plans) are exercised; `tight`
    leaves those peers little room, so plans that first make room on a peer
    (cascades) are reached too."""
    calm, hot, tight = shape == "calm", shape in ("hot", "tight"), shape == "tight"
    ns, gs = draw(clusters(min_first=4 if hot else 0))
    if calm:
        ns = tuple(_calm(n) for n in ns)
    if hot:
        first = replace(ns[0], online=True, maintenance=False, maxcpu=16, maxmem=64 * GIB,
                        mem=min(ns[0].mem, 40 * GIB),
                        cpu=draw(st.floats(0.81, 0.88) if tight else st.floats(0.82, 1.0)))
        ns = (first, *(replace(n, maxcpu=16, cpu=draw(st.floats(0.6, 0.74)) if tight
                               else n.cpu * 0.6) for n in ns[1:]))
        gs = tuple(replace(g, kind="qemu", status="running") if g.node == "pve1" else g
                   for g in gs)
    vmids = [g.vmid for g in gs]
    quiet = draw(st.integers(0, 9)) < 9  # mostly no guard, so the rules get exercised
    if not quiet and gs and draw(st.booleans()):
        # someone else's migration shows as a guest locked `migrate`
        gs = (replace(gs[0], lock="migrate"), *gs[1:])
    snapshot = Snapshot(
        time=NOW,
        nodes=ns,
        guests=gs,
        rules=draw(rules(vmids)),
        ha_auto_rebalance=draw(st.integers(0, 3)) == 3,
        migrations_running=() if quiet else ("UPID:pve1:x:qmigrate",),
        backup_running=not quiet and draw(st.booleans()),
        next_backup_in=draw(st.sampled_from([None, 600.0] if quiet else [30.0, None])),
    )
    node_cpu = {n.name: n.cpu if calm or hot or draw(st.booleans()) else draw(fraction)
                for n in ns}
    guest_cpu = {g.vmid: draw(fraction) for g in gs if draw(st.booleans())}
    estimates = Estimates(node_cpu=node_cpu, guest_cpu=guest_cpu,
                          node_cpu_ready=hot or draw(st.integers(0, 5)) < 5)
    margin = draw(st.sampled_from([0.1, 0.0, 0.05, 0.2]))
    config = Config(
        cpu_max=0.9 if calm else 0.8 if hot else draw(st.floats(0.5, 0.9)),
        memory_max=0.9 if calm else draw(st.floats(0.5, 0.9)),
        safety_margin=draw(st.floats(0.0, 0.2)),
        proactive_factor=draw(st.floats(1.05, 2.0)),
        proactive_margin=margin,
        exclude_nodes=draw(st.sampled_from([frozenset(), frozenset(), frozenset({"pve2"}),
                                            frozenset({"pve1", "pve3"})])),
    )
    state = PolicyState(
        cooldown_until={v: NOW + draw(st.sampled_from([-10.0, 0.0, 10.0]))
                        for v in vmids if draw(st.integers(0, 4)) == 4},
        unmovable=frozenset(v for v in vmids if draw(st.integers(0, 6)) == 6),
        last_moved={v: NOW - draw(st.sampled_from([0.0, 600.0, PROACTIVE_REST - 1,
                                                   PROACTIVE_REST, 7200.0]))
                    for v in vmids if draw(st.integers(0, 3)) == 3},
        pressure_since={n.name: NOW - draw(st.sampled_from([0.0, 299.0, 300.0, 3600.0]))
                        for n in snapshot.nodes if draw(st.booleans())},
        came_from={v: {draw(st.sampled_from([n.name for n in snapshot.nodes])):
                       NOW - draw(st.sampled_from([0.0, RETURN_BLOCK - 1, RETURN_BLOCK,
                                                   RETURN_MEMORY - 1]))
                       for _ in range(draw(st.integers(1, 2)))}
                   for v in vmids if draw(st.integers(0, 3)) == 3},
    )
    return snapshot, estimates, config, state


def _guest_ema(estimates: Estimates, g: Guest) -> float:
    return estimates.guest_cpu.get(g.vmid, g.cpu)


def _kept(snapshot: Snapshot, estimates: Estimates, source: Node) -> Guest:
    """The VM CPU relief keeps on `source`: the highest host share, the lowest
    vmid on an exact tie."""
    return min(
        (g for g in snapshot.guests
         if g.node == source.name and g.kind == "qemu" and g.status == "running"),
        key=lambda g: (-(_guest_ema(estimates, g) * g.maxcpu / source.maxcpu), g.vmid),
    )


def _assert_legal(
    snapshot: Snapshot, estimates: Estimates, config: Config, state: PolicyState, m: Migration,
    reason: str,
) -> None:
    guest = next(g for g in snapshot.guests if g.vmid == m.vmid)
    source = snapshot.node(m.source)
    target = snapshot.node(m.target)
    assert source is not None and target is not None

    # no guard was active
    assert not snapshot.migrations_running and not snapshot.backup_running
    assert all(g.lock != "migrate" for g in snapshot.guests)
    assert snapshot.next_backup_in is None or snapshot.next_backup_in > config.backup_guard

    # the guest is a legal candidate
    assert guest.node == source.name and guest.kind == "qemu" and guest.status == "running"
    assert not guest.template and not guest.lock
    assert guest.vmid not in state.unmovable
    assert TAG not in {t.lower() for t in guest.tags}
    assert state.cooldown_until.get(guest.vmid, -math.inf) <= snapshot.time
    assert not (snapshot.ha_auto_rebalance and guest.ha_managed)
    for rule in snapshot.rules:
        if rule.enabled and guest.vmid in rule.vmids:
            assert rule.kind == "resource-affinity" and rule.affinity == "negative"
            # never a violated negative affinity
            others = {g.vmid for g in snapshot.guests if g.node == target.name}
            assert not (rule.vmids - {guest.vmid}) & others

    # the target is legal and stays below the maxima minus the margin
    assert source.online and target.online and not target.maintenance
    assert target.name != source.name and target.name not in config.exclude_nodes
    assert m.target_after.mem == target.mem + guest.mem
    assert m.target_after.mem_fraction == (target.mem + guest.mem) / target.maxmem
    assert m.target_after.mem_fraction <= config.memory_max - config.safety_margin + EPS
    target_cpu = estimates.node_cpu.get(target.name, target.cpu)
    share = _guest_ema(estimates, guest) * guest.maxcpu / target.maxcpu
    assert math.isclose(m.target_after.cpu, target_cpu + share, abs_tol=EPS)
    assert m.target_after.cpu <= config.cpu_max - config.safety_margin + EPS

    # never back to a node the guest left within the return block; a
    # proactive move not within the return memory either
    left_at = state.came_from.get(guest.vmid, {}).get(target.name)
    if left_at is not None:
        assert snapshot.time - left_at >= RETURN_BLOCK
        assert m.mode is not Mode.PROACTIVE or snapshot.time - left_at >= RETURN_MEMORY

    # the mode fired legitimately, never a flip, a real gain
    source_cpu = estimates.node_cpu.get(source.name, source.cpu)
    if m.mode is Mode.CPU and "making room on" in reason:
        # a cascade: the first move of a plan for another, hot node, between
        # two nodes that are not the hot one, of a guest at rest for an hour
        hot = reason.split(" ", 1)[0]
        assert estimates.node_cpu_ready and hot not in (source.name, target.name)
        assert estimates.node_cpu.get(hot, math.inf) > config.cpu_max
        assert f"making room on {source.name} for vm " in reason and "planned" in reason
        assert snapshot.time - state.last_moved.get(guest.vmid, -math.inf) >= PROACTIVE_REST
        assert m.source_after.cpu < m.source_before.cpu
        assert guest.vmid != _kept(snapshot, estimates, source).vmid
    elif m.mode is Mode.CPU:
        assert estimates.node_cpu_ready and source_cpu > config.cpu_max
        # the pair's highest utilisation drops: the target ends below where
        # the source started (and under the target limit, asserted above)
        assert m.target_after.cpu < m.source_before.cpu
        assert m.source_after.cpu < m.source_before.cpu
        # a CPU move is the first of a plan that ends the episode, or sheds
        # load off a saturated source that no plan can bring under cpu_max
        assert "planned" in reason or (m.source_before.cpu >= SATURATED
                                       and "cutting starvation" in reason)
        # the kept VM (highest host share, lowest vmid on an exact tie) is
        # never the one moved
        assert guest.vmid != _kept(snapshot, estimates, source).vmid
    else:
        assert 2 * m.target_after.mem <= m.source_before.mem + m.target_before.mem
        assert m.source_after.mem < m.source_before.mem
        if m.mode is Mode.MEMORY:
            assert source.mem_fraction > config.memory_max
        else:
            assert all(n.mem_fraction <= config.memory_max for n in snapshot.nodes if n.online)
            pool = [n for n in snapshot.nodes if n.online and not n.maintenance
                    and n.name not in config.exclude_nodes and n.maxmem > 0]
            mean = sum(n.mem_fraction for n in pool) / len(pool)
            threshold = max(config.proactive_factor * mean, mean + config.proactive_margin)
            assert source.mem_fraction > threshold - PROACTIVE_HYSTERESIS
            # a real risk, sustained: near memory_max and at risk for the hold
            assert source.mem_fraction >= (config.memory_max - config.proactive_band
                                           - PROACTIVE_HYSTERESIS)
            assert snapshot.time - state.pressure_since[source.name] >= config.proactive_hold
            # never a guest the balancer moved within the proactive rest
            assert snapshot.time - state.last_moved.get(guest.vmid, -math.inf) >= PROACTIVE_REST
            # a proactive move never makes its target the next proactive source
            assert m.target_after.mem_fraction <= threshold + EPS


def _decide(snapshot: Snapshot, estimates: Estimates, config: Config, state: PolicyState,
            seed: int) -> Decision:
    return decide(snapshot, estimates, config, state, random.Random(seed))


@PROPERTY
@given(st.one_of(situations(), situations("calm"), situations("hot"), situations("tight")),
       st.integers(0, 3))
def test_decisions_never_break_a_rule(
    situation: tuple[Snapshot, Estimates, Config, PolicyState], seed: int
) -> None:
    snapshot, estimates, config, state = situation
    decision = _decide(snapshot, estimates, config, state, seed)
    assert decision.reason
    event(f"mode={decision.mode} migrates={decision.migration is not None}")
    if "making room on" in decision.reason:
        event("a cascade")
    if decision.migration is not None:
        assert decision.mode is decision.migration.mode
        _assert_legal(snapshot, estimates, config, state, decision.migration, decision.reason)


@PROPERTY
@given(situations(), st.integers(0, 3))
def test_same_seed_same_decision(
    situation: tuple[Snapshot, Estimates, Config, PolicyState], seed: int
) -> None:
    snapshot, estimates, config, state = situation
    assert _decide(snapshot, estimates, config, state, seed) == _decide(
        snapshot, estimates, config, state, seed
    )


odd_float = st.floats(allow_nan=True, allow_infinity=True)


@PROPERTY
@given(
    st.lists(st.tuples(odd_float, st.integers(-4, 64), st.integers(-GIB, 64 * GIB),
                       st.integers(-GIB, 64 * GIB), st.booleans()), max_size=4),
    st.lists(st.tuples(odd_float, odd_float, st.integers(-GIB, 8 * GIB)), max_size=6),
    odd_float,
    st.one_of(st.none(), odd_float),
)
def test_decide_never_raises_on_odd_numbers(
    node_rows: list[tuple[float, int, int, int, bool]],
    guest_rows: list[tuple[float, float, int]],
    time: float,
    next_backup: float | None,
) -> None:
    ns = tuple(Node(f"pve{i}", online, cpu, maxcpu, mem, maxmem)
               for i, (cpu, maxcpu, mem, maxmem, online) in enumerate(node_rows))
    gs = tuple(Guest(100 + i, "", f"pve{i % max(1, len(ns))}", "qemu", "running", cpu, vcpus,
                     mem, 0) for i, (cpu, vcpus, mem) in enumerate(guest_rows))
    snapshot = Snapshot(time=time, nodes=ns, guests=gs, next_backup_in=next_backup)
    decision = decide(snapshot, Estimates(), Config(), PolicyState(cooldown_until={100: 0.0}),
                      random.Random(0))
    assert decision.reason
    for value in decision.thresholds.values():
        assert math.isfinite(value)
    if decision.migration is not None:
        m = decision.migration
        for usage in (m.source_before, m.source_after, m.target_before, m.target_after):
            assert math.isfinite(usage.cpu) and math.isfinite(usage.mem_fraction)
            assert usage.mem >= 0



@st.composite
def crowded(draw: st.DrawFn) -> tuple[Snapshot, Estimates, Config, PolicyState]:
    """A hot 16-core node among peers with little CPU room each, default
    thresholds: where relief needs a plan, often one that first makes room
    on a peer. Node figures add up from the guests plus a base load."""
    nodes: list[Node] = []
    guests: list[Guest] = []
    vmid = 100
    for name, low, high in (("pve1", 0.81, 0.9), ("pve2", 0.55, 0.74), ("pve3", 0.55, 0.74),
                            ("pve4", 0.55, 0.74)):
        mine = []
        for _ in range(draw(st.integers(1, 5))):
            mine.append(Guest(vmid=vmid, name=f"vm{vmid}", node=name, kind="qemu",
                              status="running", cpu=draw(st.floats(0.05, 1.0)),
                              maxcpu=draw(st.sampled_from([1, 2, 4])),
                              mem=draw(st.integers(1, 16)) * GIB, maxmem=16 * GIB))
            vmid += 1
        guests += mine
        nodes.append(Node(name=name, online=True, cpu=draw(st.floats(low, high)), maxcpu=16,
                          mem=sum(g.mem for g in mine) + 8 * GIB, maxmem=256 * GIB))
    snapshot = Snapshot(time=NOW, nodes=tuple(nodes), guests=tuple(guests))
    estimates = Estimates(node_cpu={n.name: n.cpu for n in nodes},
                          guest_cpu={g.vmid: g.cpu for g in guests}, node_cpu_ready=True)
    vmids = [g.vmid for g in guests]
    state = PolicyState(
        last_moved={v: NOW - draw(st.sampled_from([600.0, PROACTIVE_REST]))
                    for v in vmids if draw(st.integers(0, 2)) == 2},
        came_from={v: {draw(st.sampled_from([n.name for n in nodes])): NOW - 600.0}
                   for v in vmids if draw(st.integers(0, 3)) == 3},
    )
    return snapshot, estimates, Config(), state


@PROPERTY
@given(crowded(), st.integers(0, 3))
def test_crowded_relief_never_breaks_a_rule(
    situation: tuple[Snapshot, Estimates, Config, PolicyState], seed: int
) -> None:
    """Plans in a crowded cluster, cascades included, keep every rule."""
    snapshot, estimates, config, state = situation
    decision = _decide(snapshot, estimates, config, state, seed)
    event("a cascade" if "making room on" in decision.reason else
          f"migrates={decision.migration is not None}")
    if decision.migration is not None:
        _assert_legal(snapshot, estimates, config, state, decision.migration, decision.reason)
