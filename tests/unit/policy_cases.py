"""The policy rule table: for every rule of the balancing policy, one cluster
where the rule blocks a migration and one where it lets it through.

Clusters are built from small helpers so each case differs from its baseline
in exactly the detail the rule is about. Node CPU figures double as the EMA
(`estimates_from_raw`), node memory is given in GiB of 64 GiB hosts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from pve_balancer.config import Config
from pve_balancer.model import AffinityRule, Estimates, Guest, Mode, Node, Snapshot
from pve_balancer.policy import PROACTIVE_REST, PolicyState

GIB = 1 << 30
NOW = 1000.0


def node(
    name: str,
    cpu: float = 0.3,
    mem_gib: float = 20.0,
    *,
    cores: int = 16,
    ram_gib: float = 64.0,
    online: bool = True,
    maintenance: bool = False,
) -> Node:
    return Node(
        name=name,
        online=online,
        cpu=cpu,
        maxcpu=cores,
        mem=int(mem_gib * GIB),
        maxmem=int(ram_gib * GIB),
        maintenance=maintenance,
    )


def vm(
    vmid: int,
    on: str,
    cpu: float = 0.5,
    *,
    vcpus: float = 8,
    mem_gib: float = 2.0,
    kind: str = "qemu",
    status: str = "running",
    template: bool = False,
    lock: str | None = None,
    tags: frozenset[str] = frozenset(),
    ha_managed: bool = False,
) -> Guest:
    return Guest(
        vmid=vmid,
        name=f"vm{vmid}",
        node=on,
        kind=kind,
        status=status,
        cpu=cpu,
        maxcpu=vcpus,
        mem=int(mem_gib * GIB),
        maxmem=int(max(mem_gib, 1.0) * GIB),
        template=template,
        lock=lock,
        tags=tags,
        ha_managed=ha_managed,
    )


def estimates_from_raw(snapshot: Snapshot, ready: bool = True) -> Estimates:
    """Treat the raw figures as already-smoothed EMAs."""
    return Estimates(
        node_cpu={n.name: n.cpu for n in snapshot.nodes if n.online},
        guest_cpu={g.vmid: g.cpu for g in snapshot.guests if g.status == "running"},
        node_cpu_ready=ready,
    )


@dataclass(frozen=True)
class Case:
    """One cluster and the decision expected for it. `expect` is
    `(vmid, target)` or None for no migration; `reason` must appear in the
    decision's reason."""

    snapshot: Snapshot
    expect: tuple[int, str] | None
    reason: str = ""
    mode: Mode | None = None
    config: Config = field(default_factory=Config)
    state: PolicyState = field(default_factory=PolicyState)
    ready: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Rule:
    name: str
    blocked: Case
    allowed: Case


def cluster(nodes: tuple[Node, ...], guests: tuple[Guest, ...], **extra: object) -> Snapshot:
    return Snapshot(time=NOW, nodes=nodes, guests=guests, **extra)  # type: ignore[arg-type]


# --- baselines ---------------------------------------------------------------

# CPU: pve1 is hot. 101 is the busiest (host share 0.45), 102 next (0.25),
# 104 (0.15), 103 small (0.05). Expected: 102 to pve2 (least loaded; 0.55 <=
# midpoint 0.60), which alone ends the episode (0.65). With 102 out, 104 does
# (0.75); 103 alone would not (0.85), so it is never the move.
CPU_NODES = (node("pve1", 0.90), node("pve2", 0.30), node("pve3", 0.35))
CPU_GUESTS = (
    vm(101, "pve1", 0.9, vcpus=8),
    vm(102, "pve1", 0.5, vcpus=8),
    vm(103, "pve1", 0.2, vcpus=4),
    vm(104, "pve1", 0.6, vcpus=4),
)
CPU = cluster(CPU_NODES, CPU_GUESTS)


def cpu_with(*guests: Guest, nodes: tuple[Node, ...] = CPU_NODES, **extra: object) -> Snapshot:
    """The CPU baseline with guests replaced by vmid (or added)."""
    by_id = {g.vmid: g for g in CPU_GUESTS}
    by_id.update({g.vmid: g for g in guests})
    return cluster(nodes, tuple(by_id.values()), **extra)


def cpu_nodes(**changes: Node) -> tuple[Node, ...]:
    return tuple(changes.get(n.name, n) for n in CPU_NODES)


# Memory: pve1 above memory_max (56/64 = 0.875), one movable guest 201 (8 GiB).
# Expected: 201 to pve2 (20 GiB -> 28 GiB <= midpoint 38 GiB).
MEM_NODES = (node("pve1", 0.3, 56), node("pve2", 0.3, 20), node("pve3", 0.3, 30))
MEM_GUESTS = (vm(201, "pve1", 0.1, vcpus=2, mem_gib=8),)
MEM = cluster(MEM_NODES, MEM_GUESTS)

# Proactive: all below the maxima; pve1 (0.75) above max(1.2 x mean 0.47,
# mean + 0.10) = 0.57, within proactive_band (0.10) of memory_max, and at
# risk for longer than proactive_hold (ARMED: since 300 s).
PRO_NODES = (node("pve1", 0.3, 48), node("pve2", 0.3, 19.2), node("pve3", 0.3, 22.4))
PRO = cluster(PRO_NODES, MEM_GUESTS)
ARMED_SINCE = {f"pve{i}": NOW - 300 for i in range(1, 5)}
ARMED = PolicyState(pressure_since=ARMED_SINCE)
ANY_BAND = Config(proactive_band=0.5)


def _first_drawn(vmids: list[int], wanted: int) -> int:
    """A seed whose first shuffle of `vmids` (the movable guests of one
    source, in vmid order) puts `wanted` first."""
    for seed in range(1000):
        order = list(vmids)
        random.Random(seed).shuffle(order)
        if order[0] == wanted:
            return seed
    raise AssertionError(f"no seed draws {wanted} first")


SMALL_FIRST_SEED = _first_drawn([201, 202], 202)  # rules about the threshold, not the risk band

# Cascade: pve1 at 0.86 needs 0.06; its movable 103 (0.08) fits neither
# pve2 (room 0.05 below 0.75) nor pve3 (0.03). pve2's 301 (0.03; 300 is
# pve2's busiest, kept) fits pve3 and leaves room for 103 on pve2.
CASCADE = cluster(
    (node("pve1", 0.86), node("pve2", 0.70), node("pve3", 0.72)),
    (vm(101, "pve1", 0.9), vm(103, "pve1", 0.32, vcpus=4),
     vm(300, "pve2", 0.6), vm(301, "pve2", 0.12, vcpus=4)),
)

CPU_OK = Case(CPU, (102, "pve2"), "pve1 above cpu_max (0.90 > 0.80)", Mode.CPU)
MEM_OK = Case(MEM, (201, "pve2"), "pve1 above memory_max (0.88 > 0.80)", Mode.MEMORY)
PRO_OK = Case(PRO, (201, "pve2"), "pve1 above memory_threshold", Mode.PROACTIVE, state=ARMED)

UPID = "UPID:pve3:0000A1B2:00C0FFEE:6745F00D:qmigrate:301:root@pam:"

RULES: tuple[Rule, ...] = (
    # --- guards ---
    Rule(
        "guard_migration_running_anywhere_pauses_decisions",
        Case(cpu_with(migrations_running=(UPID,)), None, "waiting: migration in progress"),
        CPU_OK,
    ),
    Rule(
        "guard_guest_locked_migrate_pauses_decisions",
        Case(cpu_with(vm(301, "pve3", lock="migrate")), None, "vm 301 locked migrate"),
        Case(cpu_with(vm(301, "pve3", lock="backup")), (102, "pve2")),
    ),
    Rule(
        "guard_backup_running_pauses_decisions",
        Case(cpu_with(backup_running=True), None, "waiting: backup running"),
        Case(cpu_with(backup_running=False), (102, "pve2")),
    ),
    Rule(
        "guard_backup_starting_within_backup_guard_pauses_decisions",
        Case(cpu_with(next_backup_in=60.0), None, "backup starts in 60 s (backup_guard 120 s)"),
        Case(cpu_with(next_backup_in=300.0), (102, "pve2")),
    ),
    # --- the three checks ---
    Rule(
        "cpu_check_fires_only_above_cpu_max",
        Case(cpu_with(nodes=cpu_nodes(pve1=node("pve1", 0.80))), None, "balanced"),
        CPU_OK,
    ),
    Rule(
        "cpu_check_needs_ready_estimates",
        Case(CPU, None, "waiting: cpu estimates warming up", ready=False),
        CPU_OK,
    ),
    Rule(
        "cpu_check_ignores_offline_nodes",
        Case(cpu_with(nodes=cpu_nodes(pve1=node("pve1", 0.90, online=False))), None, "balanced"),
        CPU_OK,
    ),
    Rule(
        "memory_check_fires_only_above_memory_max",
        # exactly at memory_max is not above it: proactive (the next check) acts instead
        Case(
            cluster((node("pve1", 0.3, 51.2), *MEM_NODES[1:]), MEM_GUESTS),
            (201, "pve2"),
            "pve1 above memory_threshold",
            Mode.PROACTIVE,
            state=ARMED,
        ),
        MEM_OK,
    ),
    Rule(
        "memory_check_ignores_offline_nodes",
        Case(
            cluster((node("pve1", 0.3, 56, online=False), *MEM_NODES[1:]), MEM_GUESTS),
            None,
            "balanced",
        ),
        MEM_OK,
    ),
    Rule(
        "cpu_check_comes_before_memory_check",
        # pve3 is hot in CPU with nothing movable: CPU mode decides (no action)
        Case(
            cluster((*MEM_NODES[:2], node("pve3", 0.95, 30)), MEM_GUESTS),
            None,
            "pve3 above cpu_max (0.95 > 0.80) but no favourable migration: no movable vm on pve3",
            Mode.CPU,
        ),
        MEM_OK,
    ),
    Rule(
        "proactive_fires_only_above_factor_times_mean",
        Case(
            cluster((node("pve1", 0.3, 28.8), node("pve2", 0.3, 25.6), node("pve3", 0.3, 25.6)),
                    MEM_GUESTS),
            None,
            "balanced",
            state=ARMED,
        ),
        PRO_OK,
    ),
    Rule(
        "proactive_needs_proactive_margin_above_mean",
        # pve1 at 0.34 is above 1.2 x mean 0.28 = 0.336 but only 6 points
        # above the mean (< proactive_margin 0.10): no churn over a few points
        Case(
            cluster((node("pve1", 0.3, 21.76), node("pve2", 0.3, 16), node("pve3", 0.3, 16)),
                    (vm(201, "pve1", 0.1, vcpus=2, mem_gib=1),)),
            None,
            "balanced: no node above cpu_max 0.80, memory_max 0.80 or memory_threshold 0.38",
            config=ANY_BAND, state=ARMED,
        ),
        # 0.42 is above both 1.2 x mean 0.368 and mean + 0.10 = 0.407
        Case(
            cluster((node("pve1", 0.3, 26.88), node("pve2", 0.3, 16), node("pve3", 0.3, 16)),
                    (vm(201, "pve1", 0.1, vcpus=2, mem_gib=1),)),
            (201, "pve2"),
            "pve1 above memory_threshold (0.42 > 0.41 = max(1.2 x mean 0.31, "
            "mean + proactive_margin 0.10))",
            Mode.PROACTIVE,
            config=ANY_BAND, state=ARMED,
        ),
    ),
    Rule(
        "proactive_rests_guests_the_balancer_moved_within_an_hour",
        Case(PRO, None, "no movable vm on pve1 (1 moved within the last hour)", Mode.PROACTIVE,
             state=replace(ARMED, last_moved={201: NOW - 3599})),
        Case(PRO, (201, "pve2"), "pve1 above memory_threshold", Mode.PROACTIVE,
             state=replace(ARMED, last_moved={201: NOW - 3600})),
    ),
    Rule(
        "proactive_needs_a_real_risk_within_proactive_band_of_memory_max",
        # pve1 at 0.65 is far above the mean but 0.15 below memory_max: it
        # risks nothing, so its uneven share is left alone
        Case(cluster((node("pve1", 0.3, 41.6), *PRO_NODES[1:]), MEM_GUESTS), None,
             "0.15 below memory_max, outside the risk band (memory_max - proactive_band 0.70)",
             state=ARMED),
        PRO_OK,
    ),
    Rule(
        "proactive_waits_for_proactive_hold",
        Case(PRO, None, "at risk for 29 s of proactive_hold 30 s",
             state=PolicyState(pressure_since={"pve1": NOW - 29})),
        Case(PRO, (201, "pve2"), "pve1 above memory_threshold", Mode.PROACTIVE,
             state=PolicyState(pressure_since={"pve1": NOW - 30})),
    ),
    Rule(
        "proactive_only_when_no_node_above_a_maximum",
        Case(
            cluster((*PRO_NODES[:2], node("pve3", 0.85, 22.4)), MEM_GUESTS),
            None,
            "pve3 above cpu_max",
            Mode.CPU,
        ),
        PRO_OK,
    ),
    Rule(
        "proactive_mean_leaves_out_nodes_in_maintenance",
        # counted, the drained pve3 would pull the mean down and pve1 would fire
        Case(
            cluster((node("pve1", 0.3, 28.8), node("pve2", 0.3, 25.6),
                     node("pve3", 0.3, 2, maintenance=True)), MEM_GUESTS),
            None,
            "balanced",
            config=ANY_BAND, state=ARMED,
        ),
        Case(
            cluster((node("pve1", 0.3, 28.8), node("pve2", 0.3, 25.6), node("pve3", 0.3, 2)),
                    MEM_GUESTS),
            (201, "pve3"),
            "pve1 above memory_threshold",
            Mode.PROACTIVE,
            config=ANY_BAND, state=ARMED,
        ),
    ),
    Rule(
        "proactive_target_stays_at_or_below_memory_threshold",
        # pve3 is low in memory but too busy in CPU to receive; pve2 would end
        # above the proactive threshold (0.58 > 0.56) and become the next source
        Case(
            cluster((node("pve1", 0.3, 49.92), node("pve2", 0.3, 32), node("pve3", 0.78, 6.4)),
                    (vm(201, "pve1", 0.1, vcpus=2, mem_gib=5.12),)),
            None,
            "vm 201 would put pve3 cpu at 0.79 > 0.75 (cpu_max - safety_margin); "
            "vm 201 would put pve2 memory at 0.58 > memory_threshold 0.56",
            Mode.PROACTIVE,
            state=ARMED,
        ),
        Case(
            cluster((node("pve1", 0.3, 49.92), node("pve2", 0.3, 32), node("pve3", 0.78, 6.4)),
                    (vm(201, "pve1", 0.1, vcpus=2, mem_gib=2.56),)),
            (201, "pve2"),
            mode=Mode.PROACTIVE,
            state=ARMED,
        ),
    ),
    # --- sources ---
    Rule(
        "sources_tried_from_most_utilised_down",
        # blocked: pve2 (second hottest) is not used while pve1 yields a move
        Case(
            cluster((node("pve1", 0.95), node("pve2", 0.90), node("pve3", 0.2), node("pve4", 0.2)),
                    (vm(101, "pve1", 0.9), vm(102, "pve1", 0.5),
                     vm(111, "pve2", 0.9), vm(112, "pve2", 0.5))),
            (102, "pve3"),
        ),
        # allowed: pve1 offers nothing movable, so pve2 is used
        Case(
            cluster((node("pve1", 0.95), node("pve2", 0.90), node("pve3", 0.2), node("pve4", 0.2)),
                    (vm(101, "pve1", 0.9), vm(102, "pve1", 0.5, lock="backup"),
                     vm(111, "pve2", 0.9), vm(112, "pve2", 0.5))),
            (112, "pve3"),
            "pve2 at 0.90 also above",
        ),
    ),
    # --- candidates ---
    Rule(
        "only_qemu_guests_move",
        Case(cpu_with(vm(102, "pve1", 0.5, kind="lxc")), (104, "pve2")),
        CPU_OK,
    ),
    Rule("templates_never_move", Case(cpu_with(vm(102, "pve1", template=True)), (104, "pve2")),
         CPU_OK),
    Rule("stopped_guests_never_move",
         Case(cpu_with(vm(102, "pve1", status="stopped")), (104, "pve2")), CPU_OK),
    Rule(
        "locked_guests_never_move",
        Case(cpu_with(vm(102, "pve1", lock="backup")), (104, "pve2")),
        CPU_OK,
    ),
    Rule(
        "guests_needing_local_resources_never_move",
        Case(CPU, (104, "pve2"), state=PolicyState(unmovable=frozenset({102}))),
        Case(CPU, (102, "pve2"), state=PolicyState(unmovable=frozenset({999}))),
    ),
    Rule(
        "exclude_tag_opts_a_guest_out",
        Case(cpu_with(vm(102, "pve1", tags=frozenset({"Pve-Balancer-Exclude"}))), (104, "pve2")),
        Case(cpu_with(vm(102, "pve1", tags=frozenset({"prod"}))), (102, "pve2")),
    ),
    Rule(
        "exclude_tag_is_configurable",
        Case(cpu_with(vm(102, "pve1", tags=frozenset({"pinned"}))), (104, "pve2"),
             config=Config(exclude_tag="pinned")),
        Case(cpu_with(vm(102, "pve1", tags=frozenset({"pve-balancer-exclude"}))),
             (102, "pve2"), config=Config(exclude_tag="pinned")),
    ),
    Rule(
        "cooldown_keeps_recently_moved_guests",
        Case(CPU, (104, "pve2"), state=PolicyState(cooldown_until={102: NOW + 1})),
        Case(CPU, (102, "pve2"), state=PolicyState(cooldown_until={102: NOW})),
    ),
    Rule(
        "node_affinity_rule_pins_guest",
        Case(cpu_with(rules=(AffinityRule("keep", "node-affinity", frozenset({102}),
                                          frozenset({"pve1"})),)), (104, "pve2")),
        Case(cpu_with(rules=(AffinityRule("keep", "node-affinity", frozenset({102}),
                                          frozenset({"pve1"}), enabled=False),)), (102, "pve2")),
    ),
    Rule(
        "positive_resource_affinity_pins_guests",
        Case(
            cpu_with(rules=(AffinityRule("pair", "resource-affinity",
                                         frozenset({102, 103, 104})),)),
            None,
            "no movable vm on pve1 (busiest vm 101 kept, 3 bound by affinity rule)",
            Mode.CPU,
        ),
        Case(
            cpu_with(rules=(AffinityRule("apart", "resource-affinity", frozenset({102, 999}),
                                         affinity="negative"),)),
            (102, "pve2"),
        ),
    ),
    Rule(
        "ha_guests_left_to_pve_auto_rebalance",
        Case(cpu_with(vm(102, "pve1", ha_managed=True), ha_auto_rebalance=True), (104, "pve2")),
        Case(cpu_with(vm(102, "pve1", ha_managed=True), ha_auto_rebalance=False), (102, "pve2")),
    ),
    Rule(
        "cpu_mode_never_moves_busiest_vm",
        Case(cluster(CPU_NODES, CPU_GUESTS[:1]), None, "busiest vm 101 kept", Mode.CPU),
        CPU_OK,
    ),
    Rule(
        "cpu_mode_keeps_one_busiest_vm_lowest_vmid_on_ties",
        # 101 and 102 tie for the highest share (0.25 each); only 101 is kept,
        # whatever the listing order, so 102 is the candidate (here locked)
        Case(cluster(CPU_NODES, (vm(102, "pve1", 0.5, lock="backup"), vm(101, "pve1", 0.5))),
             None, "no movable vm on pve1 (busiest vm 101 kept, 1 locked)", Mode.CPU),
        Case(cluster(CPU_NODES, (vm(102, "pve1", 0.5), vm(101, "pve1", 0.5),
                                 vm(103, "pve1", 0.2, vcpus=4))),
             (102, "pve2"), "pve1 above cpu_max", Mode.CPU),
    ),
    Rule(
        "cpu_mode_tries_largest_share_first",
        # 102 (0.25) does not fit on either target; the smaller 104 (0.15) does
        Case(cpu_with(nodes=(node("pve1", 0.90), node("pve2", 0.6), node("pve3", 0.6))),
             (104, "pve2")),
        CPU_OK,
    ),
    Rule(
        "cpu_move_only_as_part_of_a_plan_that_ends_the_episode",
        # 103 alone (0.05) leaves pve1 at 0.83: no move buys anything; 103 and
        # 105 together end it, so the plan's first move starts
        Case(cluster((node("pve1", 0.88), *CPU_NODES[1:]),
                     (vm(101, "pve1", 0.9), vm(103, "pve1", 0.2, vcpus=4))),
             None, "no set of moves brings pve1 to cpu_max: the best plan of 1 ends at 0.83",
             Mode.CPU),
        Case(cluster((node("pve1", 0.88), *CPU_NODES[1:]),
                     (vm(101, "pve1", 0.9), vm(103, "pve1", 0.2, vcpus=4),
                      vm(105, "pve1", 0.2, vcpus=4))),
             (103, "pve2"), "(move 1 of 2 planned, pve1 to 0.78)", Mode.CPU),
    ),
    Rule(
        "equal_plans_copy_the_least_memory",
        # 102 (8 GiB) and 104 (2 GiB) each end the episode at or below 0.75
        # alone: the plan copying less memory wins over the larger share
        Case(cpu_with(vm(102, "pve1", 0.5, mem_gib=8)), (104, "pve2"),
             "(move 1 of 1 planned, pve1 to 0.75)", Mode.CPU),
        CPU_OK,
    ),
    Rule(
        "fewest_moves_before_least_memory",
        # the 2 GiB guests 103 and 106 need two moves; the 8 GiB 102 one
        Case(cluster(CPU_NODES, (vm(101, "pve1", 0.9), vm(102, "pve1", 0.5, mem_gib=8),
                                 vm(103, "pve1", 0.24, vcpus=4), vm(106, "pve1", 0.24, vcpus=4))),
             (102, "pve2"), "(move 1 of 1 planned, pve1 to 0.65)", Mode.CPU),
        # with 102 gone the two small guests make the plan
        Case(cluster(CPU_NODES, (vm(101, "pve1", 0.9), vm(103, "pve1", 0.24, vcpus=4),
                                 vm(106, "pve1", 0.24, vcpus=4))),
             (103, "pve2"), "(move 1 of 2 planned, pve1 to 0.78)", Mode.CPU),
    ),
    Rule(
        "equal_plans_leave_the_source_below_the_target_line",
        # 104 alone (2 GiB) would end pve1 at 0.78, just under cpu_max; 102
        # (8 GiB) ends it at 0.65, below cpu_max - safety_margin: 102 wins
        Case(cpu_with(vm(102, "pve1", 0.5, mem_gib=8), vm(104, "pve1", 0.48, vcpus=4)),
             (102, "pve2"), "(move 1 of 1 planned, pve1 to 0.65)", Mode.CPU),
        # with 102 in cooldown, 104's plan to 0.78 still ends the episode
        Case(cpu_with(vm(102, "pve1", 0.5, mem_gib=8), vm(104, "pve1", 0.48, vcpus=4)),
             (104, "pve2"), "(move 1 of 1 planned, pve1 to 0.78)", Mode.CPU,
             state=PolicyState(cooldown_until={102: NOW + 60})),
    ),
    Rule(
        "equal_plans_prefer_guests_not_moved_within_the_hour",
        # 102 was moved 10 min ago: 104's equal plan is taken instead
        Case(CPU, (104, "pve2"), "(move 1 of 1 planned, pve1 to 0.75)", Mode.CPU,
             state=PolicyState(last_moved={102: NOW - 600})),
        Case(CPU, (102, "pve2"), state=PolicyState(last_moved={102: NOW - PROACTIVE_REST})),
    ),
    Rule(
        "cascade_makes_room_only_with_a_rested_guest",
        # 103 (0.08) fits no target (room 0.05 on pve2, 0.03 on pve3); moving
        # 301 (0.03) from pve2 to pve3 makes room for it, but 301 was moved
        # to pve2 10 min ago
        Case(CASCADE, None, "vm 103 would put pve2 cpu at 0.78 > 0.75", Mode.CPU,
             state=PolicyState(last_moved={301: NOW - 600})),
        Case(CASCADE, (301, "pve3"),
             "(move 1 of 2 planned, making room on pve2 for vm 103, pve1 to 0.78)", Mode.CPU),
    ),
    Rule(
        "saturated_source_without_a_plan_still_sheds_to_cut_starvation",
        Case(cluster((node("pve1", 0.94), *CPU_NODES[1:]),
                     (vm(101, "pve1", 0.9), vm(103, "pve1", 0.2, vcpus=4))),
             None, "but no set of moves brings pve1 to cpu_max", Mode.CPU),
        Case(cluster((node("pve1", 0.97), *CPU_NODES[1:]),
                     (vm(101, "pve1", 0.9), vm(103, "pve1", 0.2, vcpus=4))),
             (103, "pve2"), "pve1 saturated (cpu 0.97 >= 0.95); no set of moves", Mode.CPU),
    ),
    Rule(
        "move_must_bring_tangible_benefit",
        Case(
            cluster(CPU_NODES, (vm(101, "pve1", 0.9), vm(102, "pve1", 0.0))),
            None,
            "vm 102 brings no tangible benefit (cpu share 0.00 < 0.01)",
            Mode.CPU,
        ),
        Case(cluster(CPU_NODES, (vm(101, "pve1", 0.9), vm(102, "pve1", 0.5))), (102, "pve2")),
    ),
    # --- targets ---
    Rule(
        "target_must_be_online",
        Case(cpu_with(nodes=cpu_nodes(pve2=node("pve2", 0.30, online=False))), (102, "pve3")),
        CPU_OK,
    ),
    Rule(
        "target_must_not_be_in_maintenance",
        Case(cpu_with(nodes=cpu_nodes(pve2=node("pve2", 0.30, maintenance=True))), (102, "pve3")),
        CPU_OK,
    ),
    Rule(
        "target_must_not_be_in_exclude_nodes",
        Case(CPU, (102, "pve3"), config=Config(exclude_nodes=frozenset({"pve2"}))),
        Case(CPU, (102, "pve2"), config=Config(exclude_nodes=frozenset({"pve9"}))),
    ),
    Rule(
        "no_eligible_target_node",
        Case(
            cpu_with(nodes=(node("pve1", 0.9), node("pve2", 0.3, online=False),
                            node("pve3", 0.3, maintenance=True))),
            None,
            "no eligible target node: pve2 offline, pve3 in maintenance",
            Mode.CPU,
        ),
        CPU_OK,
    ),
    Rule(
        "negative_resource_affinity_removes_targets",
        Case(
            cpu_with(vm(301, "pve2", 0.1),
                     rules=(AffinityRule("apart", "resource-affinity", frozenset({102, 301}),
                                         affinity="negative"),)),
            (102, "pve3"),
        ),
        Case(
            cpu_with(vm(301, "pve2", 0.1),
                     rules=(AffinityRule("apart", "resource-affinity", frozenset({102, 301}),
                                         affinity="negative", enabled=False),)),
            (102, "pve2"),
        ),
    ),
    Rule(
        "target_memory_stays_below_memory_max_minus_margin",
        Case(cpu_with(nodes=cpu_nodes(pve2=node("pve2", 0.30, 47))), (102, "pve3")),
        Case(cpu_with(nodes=cpu_nodes(pve2=node("pve2", 0.30, 45))), (102, "pve2")),
    ),
    Rule(
        "target_cpu_stays_below_cpu_max_minus_margin",
        Case(cluster((*MEM_NODES[:1], node("pve2", 0.74, 20), node("pve3", 0.3, 30)), MEM_GUESTS),
             (201, "pve3")),
        Case(cluster((*MEM_NODES[:1], node("pve2", 0.70, 20), node("pve3", 0.3, 30)), MEM_GUESTS),
             (201, "pve2")),
    ),
    Rule(
        "safety_margin_is_configurable",
        Case(cpu_with(nodes=cpu_nodes(pve2=node("pve2", 0.30, 45))), (102, "pve3"),
             config=Config(safety_margin=0.1)),
        Case(cpu_with(nodes=cpu_nodes(pve2=node("pve2", 0.30, 45))), (102, "pve2"),
             config=Config(safety_margin=0.0)),
    ),
    Rule(
        "guest_cpu_on_target_scales_with_target_cores",
        # 102 is 0.25 of a 16-core host but 0.125 of a 32-core one
        Case(cpu_with(nodes=(node("pve1", 0.9), node("pve2", 0.55), node("pve3", 0.6))),
             (104, "pve2")),
        Case(cpu_with(nodes=(node("pve1", 0.9), node("pve2", 0.55, cores=32), node("pve3", 0.6))),
             (102, "pve2")),
    ),
    Rule(
        "cpu_relief_needs_no_midpoint_only_the_target_limit",
        # 102 (0.2) takes pve2 to 0.72, past the midpoint 0.71 but under the
        # target limit 0.75 and under pve1's 0.9: the highest utilisation
        # drops and pve1's episode ends. At 0.56 pve2 would end above 0.75.
        Case(
            cluster((node("pve1", 0.9), node("pve2", 0.56)),
                    (vm(101, "pve1", 0.9), vm(102, "pve1", 0.4))),
            None,
            "vm 102 would put pve2 cpu at 0.76 > 0.75 (cpu_max - safety_margin)",
            Mode.CPU,
        ),
        Case(
            cluster((node("pve1", 0.9), node("pve2", 0.52)),
                    (vm(101, "pve1", 0.9), vm(102, "pve1", 0.4))),
            (102, "pve2"),
        ),
    ),
    Rule(
        "a_moved_guest_never_returns_to_the_node_it_left_within_return_block",
        Case(CPU, (102, "pve3"), state=PolicyState(came_from={102: {"pve2": NOW - 3600}})),
        Case(CPU, (102, "pve2"), state=PolicyState(came_from={102: {"pve2": NOW - 24 * 3600}})),
    ),
    Rule(
        # not only the last node it left: 102 left pve2, then pve3
        "a_moved_guest_never_returns_to_any_node_it_left_within_return_block",
        Case(CPU, (104, "pve2"),
             state=PolicyState(came_from={102: {"pve2": NOW - 3600, "pve3": NOW - 1800}})),
        Case(CPU, (102, "pve2"),
             state=PolicyState(came_from={102: {"pve2": NOW - 24 * 3600,
                                                "pve3": NOW - 1800}})),
    ),
    Rule(
        # past the block, a return is the last resort of a relief plan
        "a_relief_plan_prefers_moves_that_send_no_guest_back_within_return_memory",
        Case(CPU, (104, "pve2"),
             state=PolicyState(came_from={102: {"pve2": NOW - 5 * 3600,
                                                "pve3": NOW - 5 * 3600}})),
        Case(CPU, (102, "pve2"),
             state=PolicyState(came_from={102: {"pve2": NOW - 5 * 3600,
                                                "pve3": NOW - 5 * 3600}},
                               cooldown_until={104: NOW + 60})),
    ),
    Rule(
        "a_proactive_move_never_returns_a_guest_within_return_memory",
        Case(PRO, (201, "pve3"), mode=Mode.PROACTIVE,
             state=replace(ARMED, came_from={201: {"pve2": NOW - 5 * 3600}})),
        Case(PRO, (201, "pve2"), mode=Mode.PROACTIVE,
             state=replace(ARMED, came_from={201: {"pve2": NOW - 24 * 3600}})),
    ),
    Rule(
        # 202 (2 GiB) is drawn first with this seed but leaves pve1 at
        # 0.72, still armed; 201 (8 GiB) disarms it in one move. Without
        # 201 (cooldown), the partial move is still made.
        "a_memory_move_that_ends_the_trigger_alone_is_taken_before_one_that_does_not",
        Case(cluster(PRO_NODES, (*MEM_GUESTS, vm(202, "pve1", 0.1, vcpus=2, mem_gib=2))),
             (201, "pve2"), mode=Mode.PROACTIVE, state=ARMED, seed=SMALL_FIRST_SEED),
        Case(cluster(PRO_NODES, (*MEM_GUESTS, vm(202, "pve1", 0.1, vcpus=2, mem_gib=2))),
             (202, "pve2"), mode=Mode.PROACTIVE, seed=SMALL_FIRST_SEED,
             state=replace(ARMED, cooldown_until={201: NOW + 60})),
    ),
    Rule(
        # 201 (8 GiB) and 203 (6 GiB) both disarm pve1 alone
        "of_the_memory_moves_that_end_the_trigger_the_least_memory_copied",
        Case(cluster(PRO_NODES, (*MEM_GUESTS, vm(203, "pve1", 0.1, vcpus=2, mem_gib=6))),
             (203, "pve2"), mode=Mode.PROACTIVE, state=ARMED),
        Case(PRO, (201, "pve2"), mode=Mode.PROACTIVE, state=ARMED),
    ),
    Rule(
        # neither 201 (4 GiB) nor 202 (2 GiB) disarms pve1 alone: the larger
        # first, so the fewest moves follow
        "without_a_move_that_ends_the_trigger_the_one_that_relieves_most",
        Case(cluster(PRO_NODES, (vm(201, "pve1", 0.1, vcpus=2, mem_gib=4),
                                 vm(202, "pve1", 0.1, vcpus=2, mem_gib=2))),
             (201, "pve2"), mode=Mode.PROACTIVE, state=ARMED, seed=SMALL_FIRST_SEED),
        Case(cluster(PRO_NODES, (vm(202, "pve1", 0.1, vcpus=2, mem_gib=2),)),
             (202, "pve2"), mode=Mode.PROACTIVE, state=ARMED, seed=SMALL_FIRST_SEED),
    ),
    Rule(
        "memory_move_must_not_flip_past_midpoint_in_bytes",
        Case(
            cluster((node("pve1", 0.3, 56), node("pve2", 0.3, 30)),
                    (vm(201, "pve1", 0.1, mem_gib=14),)),
            None,
            "vm 201 would flip the imbalance on pve2 (44.0 GiB > midpoint 43.0 GiB)",
            Mode.MEMORY,
        ),
        Case(
            cluster((node("pve1", 0.3, 56), node("pve2", 0.3, 30)),
                    (vm(201, "pve1", 0.1, mem_gib=12),)),
            (201, "pve2"),
        ),
    ),
    Rule(
        "least_utilised_target_wins",
        # blocked: pve2 is not chosen once pve3 is less utilised
        Case(cpu_with(nodes=cpu_nodes(pve3=node("pve3", 0.25))), (102, "pve3")),
        CPU_OK,
    ),
    Rule(
        "memory_mode_least_utilised_target_by_memory",
        Case(cluster((MEM_NODES[0], node("pve2", 0.3, 30), node("pve3", 0.3, 20)), MEM_GUESTS),
             (201, "pve3")),
        MEM_OK,
    ),
)


def ties_case() -> Case:
    """Equal targets: the first by node name wins, whatever the listing order."""
    nodes = (node("pve1", 0.9), node("pve3", 0.3), node("pve2", 0.3))
    return replace(CPU_OK, snapshot=cluster(nodes, CPU_GUESTS), reason="")
