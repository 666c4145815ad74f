"""The policy rule by rule: every rule once blocking and once allowing a move
(the table is in policy_cases.py), plus the decisions the table cannot show."""

from __future__ import annotations

import random

import pytest

from pve_balancer import policy
from pve_balancer.config import Config
from pve_balancer.model import Decision, Estimates, Mode, Snapshot
from pve_balancer.policy import (
    MIN_BENEFIT,
    PROACTIVE_REST,
    PolicyState,
    decide,
    track_memory_pressure,
)

from .policy_cases import (
    ANY_BAND,
    ARMED,
    ARMED_SINCE,
    CPU,
    MEM,
    MEM_GUESTS,
    MEM_NODES,
    NOW,
    PRO_NODES,
    RULES,
    Case,
    cluster,
    estimates_from_raw,
    node,
    ties_case,
    vm,
)


def run(case: Case) -> Decision:
    estimates = estimates_from_raw(case.snapshot, ready=case.ready)
    return decide(case.snapshot, estimates, case.config, case.state, random.Random(case.seed))


def check(case: Case) -> None:
    decision = run(case)
    got = None if decision.migration is None else (decision.migration.vmid,
                                                   decision.migration.target)
    assert got == case.expect, decision.reason
    assert case.reason in decision.reason
    if case.mode is not None:
        assert decision.mode is case.mode, decision.reason
    if decision.migration is not None:
        assert decision.mode is decision.migration.mode


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_blocks(rule: object) -> None:
    from .policy_cases import Rule

    assert isinstance(rule, Rule)
    check(rule.blocked)
    assert run(rule.blocked) != run(rule.allowed), "the rule changed nothing"


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_allows(rule: object) -> None:
    from .policy_cases import Rule

    assert isinstance(rule, Rule)
    check(rule.allowed)
    assert rule.allowed.expect is not None, "the allowing case must migrate"


def test_rule_names_are_unique() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))


def test_cpu_mode_never_moves_busiest_vm() -> None:
    decision = run(Case(CPU, (102, "pve2")))
    assert decision.migration is not None
    assert decision.migration.vmid != 101


def test_target_ties_break_by_node_name() -> None:
    check(ties_case())


def test_migration_carries_before_and_after_usage() -> None:
    decision = run(Case(CPU, (102, "pve2")))
    m = decision.migration
    assert m is not None
    assert (m.source, m.target, m.mode) == ("pve1", "pve2", Mode.CPU)
    assert m.source_before.cpu == pytest.approx(0.90)
    assert m.source_after.cpu == pytest.approx(0.65)  # 0.5 x 8 vCPU / 16 cores moved
    assert m.target_before.cpu == pytest.approx(0.30)
    assert m.target_after.cpu == pytest.approx(0.55)
    assert m.source_before.mem - m.source_after.mem == 2 << 30
    assert m.target_after.mem - m.target_before.mem == 2 << 30
    assert m.target_after.mem_fraction == pytest.approx(22 / 64)
    assert "migrate vm 102 (vm102) from pve1 to pve2: cpu 0.90->0.65 on pve1" in decision.reason


def test_decision_carries_thresholds() -> None:
    decision = run(Case(CPU, None))
    t = decision.thresholds
    assert t["cpu_max"] == 0.8 and t["memory_max"] == 0.8
    assert t["cpu_target_max"] == pytest.approx(0.75)
    assert t["memory_target_max"] == pytest.approx(0.75)
    assert t["memory_mean"] == pytest.approx(20 / 64)
    assert t["proactive_margin"] == pytest.approx(0.10)
    # the larger of 1.2 x mean (0.375) and mean + proactive_margin (0.4125)
    assert t["memory_threshold"] == pytest.approx(20 / 64 + 0.10)
    assert t["min_benefit"] == MIN_BENEFIT


def test_proactive_threshold_is_factor_times_mean() -> None:
    nodes = (node("pve1", 0.3, 32), node("pve2", 0.3, 16), node("pve3", 0.3, 16))
    snap = cluster(nodes, (vm(201, "pve1", 0.1, mem_gib=4),))
    # mean 1/3: 1.2 x mean = 0.40 < 0.5 fires; 1.6 x mean = 0.533 > 0.5 does not
    assert run(Case(snap, None, config=ANY_BAND, state=ARMED)).mode is Mode.PROACTIVE
    quiet = run(Case(snap, None, config=Config(proactive_factor=1.6, proactive_band=0.5),
                     state=ARMED))
    assert quiet.mode is None and quiet.reason.startswith("balanced")
    assert quiet.thresholds["memory_threshold"] == pytest.approx(1.6 / 3)


def test_memory_mode_random_order_is_reproducible_per_seed() -> None:
    guests = tuple(vm(200 + i, "pve1", 0.1, vcpus=2, mem_gib=2) for i in range(8))
    snap = cluster((node("pve1", 0.3, 56), node("pve2", 0.3, 20)), guests)
    picks = {}
    for seed in range(20):
        first = run(Case(snap, None, seed=seed)).migration
        again = run(Case(snap, None, seed=seed)).migration
        assert first is not None and again is not None
        assert first.vmid == again.vmid
        picks[seed] = first.vmid
    assert len(set(picks.values())) > 1, "the order never varied: not random"


def test_memory_mode_order_does_not_depend_on_listing_order() -> None:
    guests = tuple(vm(200 + i, "pve1", 0.1, vcpus=2, mem_gib=2) for i in range(8))
    nodes = (node("pve1", 0.3, 56), node("pve2", 0.3, 20))
    a = run(Case(cluster(nodes, guests), None, seed=7)).migration
    b = run(Case(cluster(nodes, tuple(reversed(guests))), None, seed=7)).migration
    assert a is not None and b is not None and a.vmid == b.vmid


def test_no_favourable_outcome_names_the_blocking_rule() -> None:
    snap = cluster((node("pve1", 0.91), node("pve2", 0.57)),
                   (vm(101, "pve1", 0.9), vm(104, "pve1", 0.4)))
    decision = run(Case(snap, None))
    assert decision.migration is None and decision.mode is Mode.CPU
    assert decision.reason == (
        "pve1 above cpu_max (0.91 > 0.80) but no favourable migration: "
        "vm 104 would put pve2 cpu at 0.77 > 0.75 (cpu_max - safety_margin)"
    )


def test_no_favourable_outcome_reports_headroom() -> None:
    snap = cluster((node("pve1", 0.95), node("pve2", 0.70)),
                   (vm(101, "pve1", 0.9), vm(104, "pve1", 0.4)))
    reason = run(Case(snap, None)).reason
    assert reason.endswith("vm 104 would put pve2 cpu at 0.90 > 0.75 (cpu_max - safety_margin)")


def test_balanced_cluster_does_nothing() -> None:
    snap = cluster(MEM_NODES[1:], (vm(1, "pve2"), vm(2, "pve3")))
    decision = run(Case(snap, None))
    assert decision.migration is None and decision.mode is None
    assert decision.reason.startswith("balanced: no node above cpu_max 0.80")


def test_empty_cluster_and_all_offline() -> None:
    empty = Snapshot(time=NOW, nodes=(), guests=())
    assert decide(empty, Estimates(), Config(), PolicyState(), random.Random(0)).reason == (
        "waiting: no online node"
    )
    offline = cluster((node("pve1", 0.9, online=False),), (vm(1, "pve1"),))
    assert run(Case(offline, None)).reason == "waiting: no online node"


def test_zero_capacity_nodes_neither_fire_nor_receive() -> None:
    nodes = (node("pve1", 0.3, 56), node("pve2", 0.3, 0, ram_gib=0, cores=0))
    decision = run(Case(cluster(nodes, (vm(201, "pve1", mem_gib=8),)), None))
    assert decision.migration is None
    assert "no eligible target node: pve2 reports no capacity" in decision.reason


def test_missing_estimates_fall_back_to_raw_samples() -> None:
    decision = decide(CPU, Estimates(), Config(), PolicyState(), random.Random(0))
    assert decision.migration is not None and decision.migration.vmid == 102


def test_guest_ema_not_raw_sample_decides_the_share() -> None:
    # raw says 102 is idle, its EMA says busy: the EMA is what counts
    est = estimates_from_raw(CPU)
    est.guest_cpu[102] = 0.5
    snap = cluster(CPU.nodes, (vm(101, "pve1", 0.9), vm(102, "pve1", 0.0)))
    decision = decide(snap, est, Config(), PolicyState(), random.Random(0))
    assert decision.migration is not None and decision.migration.vmid == 102


def test_nan_figures_do_not_pass_checks() -> None:
    nan = float("nan")
    snap = cluster((node("pve1", nan, 56), node("pve2", 0.3, 20)),
                   (vm(201, "pve1", nan, mem_gib=8),))
    est = Estimates(node_cpu={"pve1": nan, "pve2": 0.3}, guest_cpu={201: nan})
    decision = decide(snap, est, Config(), PolicyState(), random.Random(0))
    assert decision.migration is not None and decision.mode is Mode.MEMORY
    assert decision.migration.target_after.cpu == 0.3


def test_reason_prints_a_trigger_with_enough_decimals_to_differ() -> None:
    """A CPU average of 0.8003 against cpu_max 0.80 must not read "0.80 > 0.80"."""
    from pve_balancer.policy import _above

    assert _above(0.91, 0.8) == "0.91 > 0.80"
    assert _above(0.8003, 0.8) == "0.8003 > 0.8000"
    assert _above(0.803, 0.8) == "0.803 > 0.800"


def test_proactive_margin_zero_leaves_only_the_factor() -> None:
    # pve1 at 0.34: above 1.2 x mean 0.28 but within proactive_margin of the mean
    snap = cluster((node("pve1", 0.3, 21.76), node("pve2", 0.3, 16), node("pve3", 0.3, 16)),
                   (vm(201, "pve1", 0.1, vcpus=2, mem_gib=1),))
    assert run(Case(snap, None, config=ANY_BAND, state=ARMED)).mode is None
    decision = run(Case(snap, None, config=Config(proactive_margin=0.0, proactive_band=0.5),
                        state=ARMED))
    assert decision.mode is Mode.PROACTIVE and decision.migration is not None
    assert decision.thresholds["memory_threshold"] == pytest.approx(1.2 * 0.28)


def test_proactive_target_limit_is_the_effective_threshold() -> None:
    # mean 0.46: 1.2 x mean = 0.552, mean + 0.10 = 0.56. pve2 ends at 0.555,
    # above the relative figure but not above the threshold in force.
    nodes = (node("pve1", 0.3, 49.92), node("pve2", 0.3, 32), node("pve3", 0.78, 6.4))
    snap = cluster(nodes, (vm(201, "pve1", 0.1, vcpus=2, mem_gib=3.52),))
    decision = run(Case(snap, None, state=ARMED))
    assert decision.migration is not None and decision.migration.target == "pve2"
    assert decision.migration.target_after.mem_fraction == pytest.approx(0.555)
    assert decision.thresholds["memory_threshold"] == pytest.approx(0.56)


def test_proactive_rest_does_not_hold_back_saturation_relief() -> None:
    """Only proactive mode rests a guest; CPU and memory saturation still move
    it (the vm_cooldown alone applies there). In CPU relief a guest moved
    within the hour only loses ties to one that was not: here every
    candidate has just moved."""
    just_moved = PolicyState(last_moved={102: NOW, 103: NOW, 104: NOW, 201: NOW})
    cpu = run(Case(CPU, None, state=just_moved))
    assert cpu.mode is Mode.CPU and cpu.migration is not None and cpu.migration.vmid == 102
    mem = run(Case(MEM, None, state=just_moved))
    assert mem.mode is Mode.MEMORY and mem.migration is not None and mem.migration.vmid == 201


def test_proactive_rest_with_an_unusable_clock_keeps_resting() -> None:
    from .policy_cases import PRO

    state = PolicyState(last_moved={201: NOW - 2 * PROACTIVE_REST}, pressure_since=ARMED_SINCE)
    assert run(Case(PRO, None, state=state)).migration is not None
    nan_clock = Snapshot(time=float("nan"), nodes=PRO.nodes, guests=PRO.guests)
    decision = run(Case(nan_clock, None, state=state))
    # with no usable time neither the rest nor the hold can be judged: no move
    assert decision.migration is None and decision.mode is None


def test_memory_pressure_is_tracked_with_hysteresis() -> None:
    """A node is at risk from the first snapshot above the threshold and in
    the band; it stays at risk (same start) until clearly below either bar,
    so a node hovering at a bar neither flaps nor restarts its hold."""
    def snap(at: float, pve1_gib: float) -> Snapshot:
        return Snapshot(time=at, nodes=(node("pve1", 0.3, pve1_gib), *PRO_NODES[1:]),
                        guests=MEM_GUESTS)

    config = Config()
    armed = track_memory_pressure({}, snap(NOW, 48), config)  # 0.75: at risk
    assert armed == {"pve1": NOW}
    # 0.69: below the band's 0.70 but within the 0.02 hysteresis: still armed
    armed = track_memory_pressure(armed, snap(NOW + 100, 44.16), config)
    assert armed == {"pve1": NOW}
    assert run(Case(snap(NOW + 300, 44.16), None, state=PolicyState(
        pressure_since=armed))).mode is Mode.PROACTIVE, "armed and held: it acts"
    # 0.67: clearly below: disarmed; back at 0.69 it would have to start over
    assert track_memory_pressure(armed, snap(NOW + 200, 42.88), config) == {}
    assert track_memory_pressure({}, snap(NOW + 300, 44.16), config) == {}
    # nodes outside the proactive pool are never tracked
    drained = Snapshot(time=NOW, nodes=(node("pve1", 0.3, 48, maintenance=True),
                                        *PRO_NODES[1:]), guests=MEM_GUESTS)
    assert track_memory_pressure({}, drained, config) == {}


def _relief_search(snapshot: Snapshot, estimates: Estimates, hot: str) -> policy._Search:
    """The CPU relief search for node `hot`, built as `decide` builds it."""
    view = policy._View.build(snapshot, estimates, Config())
    source = view.loads[hot]
    movable, _, _ = policy._candidates(view, Mode.CPU, source, PolicyState(), random.Random(0))
    targets, _ = policy._targets(view, source)
    return policy._Search(view, source, movable, targets, PolicyState(), random.Random(0))


def test_plan_search_is_bounded_on_a_large_tight_cluster() -> None:
    """32 nodes of 50 guests, every peer just under the target line: without
    the bound the search weighed millions of pairs (seconds per cycle); with
    it, it stops at SEARCH_STEPS and the decision is still a legal one."""
    rng = random.Random(2)
    nodes, guests, vmid = [], [], 100
    for i in range(32):
        name = f"pve{i + 1}"
        for _ in range(50):
            guests.append(vm(vmid, name, rng.uniform(0.05, 1.0),
                             vcpus=rng.choice([4, 8]) if i == 0 else rng.choice([1, 2, 4]),
                             mem_gib=rng.randint(1, 8)))
            vmid += 1
        cpu = rng.uniform(0.81, 0.86) if i == 0 else rng.uniform(0.735, 0.749)
        nodes.append(node(name, cpu, 200, cores=64, ram_gib=512))
    snapshot = cluster(tuple(nodes), tuple(guests))
    estimates = estimates_from_raw(snapshot)
    search = _relief_search(snapshot, estimates, "pve1")
    search.run()
    assert search.steps == policy.SEARCH_STEPS  # reached, and not passed
    decision = decide(snapshot, estimates, Config(), PolicyState(), random.Random(0))
    assert decision.mode is Mode.CPU and decision.reason.startswith("pve1 above cpu_max")


def test_plan_search_follows_a_few_targets_per_move_on_a_wide_cluster() -> None:
    """64 nodes with room everywhere, a hot node that needs two moves: the
    search follows `TARGETS_PER_MOVE` accepting targets per guest and step,
    so the two-move plan costs a few thousand steps, not the 100,000 of
    `SEARCH_STEPS` (1.4 s a cycle) it took when every target was followed."""
    hot = tuple(vm(100 + i, "pve1", 0.9, vcpus=4, mem_gib=4) for i in range(16))
    nodes = [node("pve1", 0.89, 100, cores=64, ram_gib=512)]
    nodes += [node(f"pve{i}", 0.40, 100, cores=64, ram_gib=512) for i in range(2, 65)]
    snapshot = cluster(tuple(nodes), hot)
    estimates = estimates_from_raw(snapshot)
    search = _relief_search(snapshot, estimates, "pve1")
    plan = search.run()
    assert plan is not None and len(plan.moves) == 2
    per_move = policy.TARGETS_PER_MOVE
    movable = len(search.movable)
    bound = movable * per_move * (1 + (movable - 1) * per_move)
    assert search.steps <= bound < policy.SEARCH_STEPS // 10
    decision = decide(snapshot, estimates, Config(), PolicyState(), random.Random(0))
    assert "(move 1 of 2 planned" in decision.reason
