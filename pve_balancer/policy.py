"""The decision engine: given one snapshot, the CPU estimates and the
configuration, which single live migration (if any) should start now, and why.

`decide` is a pure, total function: no I/O, no clock, no exceptions. Every
input yields a `Decision` whose `reason` is one line an operator can act on;
randomness comes only from the `rng` passed in, so a seeded run repeats. All
of the balancing rules live here (see docs/policy.md for the rules as
implemented and the reasoning behind each choice).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from .config import Config
from .model import Decision, Estimates, Guest, Migration, Mode, Node, Snapshot, Usage

MIN_BENEFIT = 0.01
"""A move must lower the source by at least this fraction of its capacity (CPU
or memory, by mode): moving an idle or tiny guest costs a migration and
relieves nothing."""

PROACTIVE_REST = 3600.0
"""Seconds after the balancer moved (or tried to move) a guest during which
proactive mode leaves that guest alone. A guest's memory use drifts over the
day, so a guest moved for memory balance soon looks like the best candidate
to move again, and a CPU move can lift its new node just over the proactive
threshold; measured on a healthy Bitbrains day this made most migrations
undo earlier ones (docs/benchmarks.md). One hour is also the window in which
a return counts as a ping-pong. Saturation (CPU or memory mode) is not held
back by it: relief comes first, and the ordinary `vm_cooldown` still applies."""

SATURATED = 0.95
"""A node whose CPU EMA is at least this is saturated: its guests are
starved of CPU (PVE reports delivered CPU, which cannot exceed the host), so
any move that fits elsewhere cuts that starvation by the moved share. Below
it, a move that cannot bring the node back under `cpu_max` buys nothing."""

RETURN_BLOCK = 4 * 3600.0
"""Seconds during which a guest the balancer moved is never moved back to
a node it left, in any mode: a return undoes the first migration and both
were bought for nothing. Loads drift back and forth over a day; four hours
covers the swings the benchmark days show (docs/benchmarks.md)."""

RETURN_MEMORY = 24 * 3600.0
"""How long the balancer remembers every node it moved a guest off. Past
`RETURN_BLOCK`, a return is still the last resort: a relief plan that
sends no guest back to a node it left that day is preferred to one that
does, and a proactive move (never needed for relief) does not send a guest
back at all. Loads follow the day: the node a guest left in this morning's
peak is often the coolest one in the evening, and a return then undoes the
morning's migration (docs/policy.md)."""

PROACTIVE_HYSTERESIS = 0.02
"""A node armed for proactive spread stays armed until its memory fraction is
this far below both bars that armed it (the proactive threshold and the risk
band), so a node hovering at a bar neither flaps nor waits out a new hold."""

_GIB = float(1 << 30)
_SHOWN_TARGETS = 3  # blockers named in a no-action reason, least utilised target first


@dataclass(frozen=True)
class PolicyState:
    """What the agent remembers between cycles that the snapshot cannot say:
    guests it migrated recently (`cooldown_until[vmid]` in snapshot time),
    guests known not to migrate (local disks or resources, learnt from PVE's
    migrate preconditions), and when the balancer last asked PVE to migrate
    each guest (`last_moved[vmid]`, snapshot time of the POST, for
    `PROACTIVE_REST`; the agent keeps entries at least that long).

    `settle_until` (snapshot time) holds every decision back after a
    migration ended, until PVE's node statistics show the guest where it now
    is; `settle_after` says which migration, for the journal. `warming` are
    the running guests whose CPU EMA is neither seeded from RRD nor backed by
    a minute of samples: a CPU move off a node with such guests would rest on
    guesses about which VM is busiest, so it waits. `pressure_since` is, per
    node, since when its memory has been at risk (`track_memory_pressure`):
    proactive spread waits until that has lasted `proactive_hold`.
    `came_from[vmid]` maps every node the balancer moved a guest off within
    `RETURN_MEMORY` to when it last did (`RETURN_BLOCK`)."""

    cooldown_until: Mapping[int, float] = field(default_factory=dict)
    unmovable: frozenset[int] = frozenset()
    last_moved: Mapping[int, float] = field(default_factory=dict)
    settle_until: float = 0.0
    settle_after: str = ""
    warming: frozenset[int] = frozenset()
    pressure_since: Mapping[str, float] = field(default_factory=dict)
    came_from: Mapping[int, Mapping[str, float]] = field(default_factory=dict)


# --- sanitised numbers -------------------------------------------------------


def _num(value: object) -> float:
    """A finite, non-negative float (anything else counts as 0): the policy
    must not turn a bad sample into NaN comparisons that silently pass."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number > 0.0 else 0.0


def _bytes(value: object) -> int:
    return int(_num(value))


@dataclass(frozen=True)
class _Load:
    """A node's figures as the policy uses them."""

    node: Node
    cpu: float  # EMA fraction of all host cores
    mem: int  # used bytes
    maxmem: int
    maxcpu: float

    @property
    def mem_fraction(self) -> float:
        return self.mem / self.maxmem if self.maxmem > 0 else 0.0

    @property
    def name(self) -> str:
        return self.node.name

    def usage(self) -> Usage:
        return Usage(cpu=self.cpu, mem=self.mem, mem_fraction=self.mem_fraction)

    def after(self, cpu_delta: float, mem_delta: int) -> Usage:
        mem = max(0, self.mem + mem_delta)
        cpu = max(0.0, self.cpu + cpu_delta)
        return Usage(cpu=cpu, mem=mem, mem_fraction=mem / self.maxmem if self.maxmem > 0 else 0.0)


def _utilisation(load: _Load | Usage, mode: Mode) -> float:
    return load.cpu if mode is Mode.CPU else load.mem_fraction


def _f(x: float) -> str:
    return f"{x:.2f}"


def _above(value: float, limit: float) -> str:
    """`value > limit` for a reason line, with as many decimals as it takes
    for the printed numbers to differ: "0.80 > 0.80" reads as a bug."""
    for digits in (2, 3, 4):
        shown, bound = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if shown != bound:
            return f"{shown} > {bound}"
    return f"{value:.6f} > {limit:.6f}"


def _gib(b: float) -> str:
    return f"{b / _GIB:.1f} GiB"


@dataclass(frozen=True)
class _View:
    """The snapshot seen through the estimates, with every number sanitised."""

    snapshot: Snapshot
    estimates: Estimates
    config: Config
    loads: dict[str, _Load]

    @classmethod
    def build(cls, snapshot: Snapshot, estimates: Estimates, config: Config) -> _View:
        loads: dict[str, _Load] = {}
        for node in snapshot.nodes:
            if not node.online or node.name in loads:
                continue
            ema = estimates.node_cpu.get(node.name)
            loads[node.name] = _Load(
                node=node,
                cpu=_num(node.cpu if ema is None else ema),
                mem=_bytes(node.mem),
                maxmem=_bytes(node.maxmem),
                maxcpu=_num(node.maxcpu),
            )
        return cls(snapshot, estimates, config, loads)

    def guest_cpu(self, guest: Guest) -> float:
        """Guest CPU EMA as a fraction of its own vCPUs (raw sample if no EMA)."""
        return _num(self.estimates.guest_cpu.get(guest.vmid, guest.cpu))

    def share(self, guest: Guest, load: _Load) -> float:
        """The guest's CPU as a fraction of `load`'s node."""
        if load.maxcpu <= 0.0:
            return 0.0
        return self.guest_cpu(guest) * _num(guest.maxcpu) / load.maxcpu

    @property
    def cpu_limit(self) -> float:
        return self.config.cpu_max - self.config.safety_margin

    @property
    def memory_limit(self) -> float:
        return self.config.memory_max - self.config.safety_margin

    @cached_property
    def memory_mean(self) -> float:
        """Mean memory fraction of the proactive pool (see `_memory_pool`)."""
        pool = _memory_pool(self)
        return sum(load.mem_fraction for load in pool) / len(pool) if pool else 0.0

    @property
    def memory_relative(self) -> float:
        """`proactive_factor` x mean: the seed's "20 % above the average"."""
        return self.config.proactive_factor * self.memory_mean

    @property
    def memory_absolute(self) -> float:
        """mean + `proactive_margin`: the absolute gap that keeps a
        low-memory cluster from churning over a few percentage points."""
        return self.memory_mean + self.config.proactive_margin

    @property
    def memory_threshold(self) -> float:
        """The proactive threshold in force: a node must exceed both."""
        return max(self.memory_relative, self.memory_absolute)

    @cached_property
    def vmids_on(self) -> dict[str, frozenset[int]]:
        """Every guest placed on each node, whatever its status."""
        placed: dict[str, set[int]] = {}
        for guest in self.snapshot.guests:
            placed.setdefault(guest.node, set()).add(guest.vmid)
        return {name: frozenset(vmids) for name, vmids in placed.items()}

    @cached_property
    def pinned(self) -> frozenset[int]:
        return _pinned_vmids(self.snapshot)


# --- guards ------------------------------------------------------------------


def _guard(snapshot: Snapshot, config: Config) -> str | None:
    running = snapshot.in_flight()
    if running:
        more = f" and {len(running) - 3} more" if len(running) > 3 else ""
        shown = ", ".join(running[:3]) + more
        return f"waiting: migration in progress ({shown})"
    if snapshot.backup_running:
        return "waiting: backup running"
    if snapshot.next_backup_in is not None:
        starts = snapshot.next_backup_in
        if math.isnan(starts) or starts <= config.backup_guard:
            return (
                f"waiting: backup starts in {max(0.0, starts):.0f} s "
                f"(backup_guard {config.backup_guard:.0f} s)"
            )
    return None


# --- candidates --------------------------------------------------------------


def _pinned_vmids(snapshot: Snapshot) -> frozenset[int]:
    """Guests an enabled HA rule ties to a node or to other guests."""
    pinned: set[int] = set()
    for rule in snapshot.rules:
        if not rule.enabled:
            continue
        if rule.kind == "node-affinity" or (
            rule.kind == "resource-affinity" and rule.affinity == "positive"
        ):
            pinned.update(rule.vmids)
    return frozenset(pinned)


def _filter_reason(
    guest: Guest, view: _View, state: PolicyState, pinned: frozenset[int]
) -> str | None:
    """Why `guest` may not be moved at all (None: it may)."""
    config, now = view.config, view.snapshot.time
    if guest.kind != "qemu":
        return "not qemu"
    if guest.template:
        return "template"
    if guest.lock:
        return "locked"
    if guest.vmid in state.unmovable:
        return "needs local resources"
    tag = config.exclude_tag.strip().lower()
    if tag and tag in {t.strip().lower() for t in guest.tags}:
        return "excluded by tag"
    until = state.cooldown_until.get(guest.vmid)
    if until is not None and not now >= until:  # an unusable clock keeps the cooldown
        return "in cooldown"
    if guest.vmid in pinned:
        return "bound by affinity rule"
    if view.snapshot.ha_auto_rebalance and guest.ha_managed:
        return "left to PVE auto-rebalance"
    return None


# --- evaluation of one source ------------------------------------------------


@dataclass(frozen=True)
class _Rejection:
    """Why a (guest, target) pair or a source failed, for the log line."""

    text: str


def _targets(view: _View, source: _Load) -> tuple[list[_Load], list[str]]:
    eligible: list[_Load] = []
    excluded: list[str] = []
    for node in view.snapshot.nodes:
        if node.name == source.name:
            continue
        load = view.loads.get(node.name)
        if load is None:
            excluded.append(f"{node.name} offline")
        elif node.maintenance:
            excluded.append(f"{node.name} in maintenance")
        elif node.name in view.config.exclude_nodes:
            excluded.append(f"{node.name} in exclude_nodes")
        elif load.maxmem <= 0 or load.maxcpu <= 0.0:
            excluded.append(f"{node.name} reports no capacity")
        elif load not in eligible:
            eligible.append(load)
    return eligible, excluded


def _anti_affine(view: _View, guest: Guest, target: _Load) -> str | None:
    on_target = view.vmids_on.get(target.name, frozenset())
    for rule in view.snapshot.rules:
        if (
            rule.enabled
            and rule.kind == "resource-affinity"
            and rule.affinity == "negative"
            and guest.vmid in rule.vmids
        ):
            clash = sorted((rule.vmids - {guest.vmid}) & on_target)
            if clash:
                return (
                    f"vm {guest.vmid} must not share a node with vm {clash[0]} "
                    f"(negative resource-affinity {rule.rule_id}) on {target.name}"
                )
    return None


def _evaluate(
    view: _View, mode: Mode, guest: Guest, source: _Load, target: _Load, state: PolicyState
) -> Migration | _Rejection:
    """All favourable-outcome checks for moving `guest` from `source` to `target`."""
    left_at = state.came_from.get(guest.vmid, {}).get(target.name)
    if left_at is not None:
        ago = view.snapshot.time - left_at
        if not ago >= RETURN_BLOCK or (mode is Mode.PROACTIVE and not ago >= RETURN_MEMORY):
            return _Rejection(f"vm {guest.vmid} would return to {target.name}, which it left "
                              f"{max(0.0, ago) / 60:.0f} min ago")
    clash = _anti_affine(view, guest, target)
    if clash is not None:
        return _Rejection(clash)
    mem = _bytes(guest.mem)
    cpu_on_target = view.share(guest, target)
    target_after = target.after(cpu_on_target, mem)
    if target_after.mem_fraction > view.memory_limit:
        return _Rejection(
            f"vm {guest.vmid} would put {target.name} memory at "
            f"{_f(target_after.mem_fraction)} > {_f(view.memory_limit)} "
            "(memory_max - safety_margin)"
        )
    if target_after.cpu > view.cpu_limit:
        return _Rejection(
            f"vm {guest.vmid} would put {target.name} cpu at "
            f"{_f(target_after.cpu)} > {_f(view.cpu_limit)} (cpu_max - safety_margin)"
        )
    if mode is Mode.PROACTIVE and target_after.mem_fraction > view.memory_threshold:
        return _Rejection(
            f"vm {guest.vmid} would put {target.name} memory at "
            f"{_f(target_after.mem_fraction)} > memory_threshold {_f(view.memory_threshold)}"
        )
    # CPU relief has no midpoint rule: the source is above cpu_max and the
    # target ends at most at cpu_max - safety_margin, so the pair's highest
    # utilisation always drops (what the midpoint rule exists for) and no new
    # hot node is made. Requiring the target to end below the midpoint as
    # well kept nodes hot for hours when the movable VMs were large
    # (docs/policy.md, "CPU relief as a plan").
    if mode is not Mode.CPU and 2 * target_after.mem > source.mem + target.mem:
        midpoint_bytes = (source.mem + target.mem) / 2.0
        return _Rejection(
            f"vm {guest.vmid} would flip the imbalance on {target.name} "
            f"({_gib(target_after.mem)} > midpoint {_gib(midpoint_bytes)})"
        )
    return Migration(
        vmid=guest.vmid,
        name=guest.name,
        source=source.name,
        target=target.name,
        mode=mode,
        source_before=source.usage(),
        source_after=source.after(-view.share(guest, source), -mem),
        target_before=target.usage(),
        target_after=target_after,
        ha_managed=guest.ha_managed,
    )


def _benefit(view: _View, mode: Mode, guest: Guest, source: _Load) -> float:
    if mode is Mode.CPU:
        return view.share(guest, source)
    return _bytes(guest.mem) / source.maxmem if source.maxmem > 0 else 0.0


def _returns(move: Migration, view: _View, state: PolicyState) -> bool:
    """Whether `move` sends its guest back to a node the balancer moved it
    off within `RETURN_MEMORY`."""
    left_at = state.came_from.get(move.vmid, {}).get(move.target)
    return left_at is not None and not view.snapshot.time - left_at >= RETURN_MEMORY


def _resting(guest: Guest, view: _View, state: PolicyState) -> bool:
    """Whether the balancer moved (or tried to move) `guest` within the last
    `PROACTIVE_REST` seconds. An unusable clock keeps the guest resting."""
    return _resting_vmid(guest.vmid, view, state)


def _resting_vmid(vmid: int, view: _View, state: PolicyState) -> bool:
    moved = state.last_moved.get(vmid)
    if moved is None:
        return False
    return not view.snapshot.time - moved >= PROACTIVE_REST


def _candidates(
    view: _View, mode: Mode, source: _Load, state: PolicyState, rng: random.Random
) -> tuple[list[Guest], dict[str, int], list[int]]:
    """Movable guests on `source` in the order they are tried, the count of
    guests filtered out per reason, and the busiest VM kept (CPU mode: a
    list of at most one vmid)."""
    pinned = view.pinned
    seen: set[int] = set()
    running: list[Guest] = []
    for guest in view.snapshot.guests:
        if guest.node == source.name and guest.status == "running" and guest.vmid not in seen:
            seen.add(guest.vmid)
            running.append(guest)
    running.sort(key=lambda g: g.vmid)

    kept: list[int] = []
    if mode is Mode.CPU:
        vms = [g for g in running if g.kind == "qemu"]
        if vms:
            # one VM: the highest host share, the lowest vmid on an exact tie
            busiest = min(vms, key=lambda g: (-view.share(g, source), g.vmid))
            kept = [busiest.vmid]

    filtered: dict[str, int] = {}
    movable: list[Guest] = []
    for guest in running:
        why = _filter_reason(guest, view, state, pinned)
        if why is None and guest.vmid in kept:
            why = "busiest vm kept"
        if why is None and mode is Mode.PROACTIVE and _resting(guest, view, state):
            why = "moved within the last hour"
        if why is not None:
            filtered[why] = filtered.get(why, 0) + 1
            continue
        movable.append(guest)

    if mode is Mode.CPU:
        movable.sort(key=lambda g: (-view.share(g, source), g.vmid))
    else:
        rng.shuffle(movable)
    return movable, filtered, kept


def _no_movable(source: _Load, filtered: Mapping[str, int], kept: Sequence[int]) -> _Rejection:
    parts = [f"{count} {why}" for why, count in sorted(filtered.items())]
    if kept:
        parts = [f"busiest vm {kept[0]} kept"] + [
            p for p in parts if not p.endswith("busiest vm kept")
        ]
    detail = f" ({', '.join(parts)})" if parts else ""
    return _Rejection(f"no movable vm on {source.name}{detail}")


def _try_source(
    view: _View, mode: Mode, source: _Load, state: PolicyState, rng: random.Random
) -> Migration | _Rejection:
    movable, filtered, kept = _candidates(view, mode, source, state, rng)
    if not movable:
        return _no_movable(source, filtered, kept)

    targets, excluded = _targets(view, source)
    if not targets:
        detail = f": {', '.join(excluded)}" if excluded else ""
        return _Rejection(f"no eligible target node{detail}")
    targets.sort(key=lambda t: (_utilisation(t, mode), t.name))

    first: _Rejection | None = None
    idle: _Rejection | None = None
    passing: list[Migration] = []
    for guest in movable:
        benefit = _benefit(view, mode, guest, source)
        if benefit < MIN_BENEFIT:
            if idle is None:
                what = "cpu share" if mode is Mode.CPU else "memory share"
                idle = _Rejection(
                    f"vm {guest.vmid} brings no tangible benefit "
                    f"({what} {_f(benefit)} < {_f(MIN_BENEFIT)})"
                )
            continue
        blocked: list[str] = []
        for target in targets:
            outcome = _evaluate(view, mode, guest, source, target, state)
            if isinstance(outcome, Migration):
                passing.append(outcome)
                break
            blocked.append(outcome.text)
        else:
            if first is None:
                # the best candidate's blockers, least utilised target first
                shown = "; ".join(blocked[:_SHOWN_TARGETS])
                more = len(blocked) - _SHOWN_TARGETS
                first = _Rejection(shown + (f"; {more} more targets blocked" if more > 0 else ""))
    if passing:
        return _cheapest_ending(view, mode, passing)
    return first or idle or _Rejection(f"no movable vm on {source.name}")


def _cheapest_ending(view: _View, mode: Mode, passing: Sequence[Migration]) -> Migration:
    """Of the moves that pass every check (one per guest, in the order the
    guests were drawn), the one that ends the trigger alone and copies the
    least memory; where none ends it, the one that relieves the source most,
    so the moves still needed are as few as they can be. The draw order
    (random, the seed's rule) breaks ties.

    Taking the first guest drawn, as before, moved a small guest first on
    the memory-heavy day (0.73 -> 0.72) and a second one off the same node
    a cycle later: two migrations where one did (docs/policy.md)."""
    ending = [m for m in passing if _ends_memory_trigger(view, mode, m.source_after)]
    if ending:
        return min(ending, key=lambda m: m.target_after.mem - m.target_before.mem)
    return min(passing, key=lambda m: m.source_after.mem)


def _ends_memory_trigger(view: _View, mode: Mode, left: Usage) -> bool:
    """Whether a source left at `left` no longer needs a move of this mode:
    under `memory_max` (memory mode), or disarmed, that is clear of the
    proactive threshold or of the risk band by `PROACTIVE_HYSTERESIS`
    (proactive mode)."""
    config = view.config
    if mode is Mode.MEMORY:
        return not left.mem_fraction > config.memory_max
    line = max(view.memory_threshold, _risk_floor(view)) - PROACTIVE_HYSTERESIS
    return left.mem_fraction < line


# --- CPU relief as a plan ---------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Moves off one hot source, each checked against the loads the earlier
    ones leave behind, largest CPU share first (so the fewest moves)."""

    source: _Load
    moves: tuple[Migration, ...]
    end_cpu: float  # the source's CPU EMA after every move
    ends_episode: bool
    targets: tuple[_Load, ...]  # the targets as the plan leaves them
    room_made: int = 0  # leading moves between other nodes that make room for the rest


def _plan_relief(view: _View, source: _Load, state: PolicyState,
                 rng: random.Random) -> _Plan | _Rejection:
    """The fewest moves that take `source` back to `cpu_max` or below (the
    least memory copied among those), or the best partial plan when no set
    of moves does."""
    movable, filtered, kept = _candidates(view, Mode.CPU, source, state, rng)
    if not movable:
        return _no_movable(source, filtered, kept)
    targets, excluded = _targets(view, source)
    if not targets:
        detail = f": {', '.join(excluded)}" if excluded else ""
        return _Rejection(f"no eligible target node{detail}")
    best = _Search(view, source, movable, targets, state, rng).run()
    if best is not None:
        return best
    limit = view.config.cpu_max
    planned = {t.name: t for t in targets}
    current = source
    moves: list[Migration] = []
    first: _Rejection | None = None
    idle: _Rejection | None = None
    for guest in movable:
        if not current.cpu > limit:
            break
        benefit = view.share(guest, source)
        if benefit < MIN_BENEFIT:
            if idle is None:
                idle = _Rejection(f"vm {guest.vmid} brings no tangible benefit "
                                  f"(cpu share {_f(benefit)} < {_f(MIN_BENEFIT)})")
            continue
        blocked: list[str] = []
        for target in sorted(planned.values(), key=lambda t: (t.cpu, t.name)):
            outcome = _evaluate(view, Mode.CPU, guest, current, target, state)
            if isinstance(outcome, Migration):
                moves.append(outcome)
                after = outcome.target_after
                planned[target.name] = replace(target, cpu=after.cpu, mem=after.mem)
                left = outcome.source_after
                current = replace(current, cpu=left.cpu, mem=left.mem)
                break
            blocked.append(outcome.text)
        else:
            if first is None:
                shown = "; ".join(blocked[:_SHOWN_TARGETS])
                more = len(blocked) - _SHOWN_TARGETS
                first = _Rejection(shown + (f"; {more} more targets blocked" if more > 0 else ""))
    if not moves:
        return first or idle or _Rejection(f"no movable vm on {source.name}")
    return _Plan(source=source, moves=tuple(moves), end_cpu=current.cpu,
                 ends_episode=not current.cpu > limit,
                 targets=tuple(sorted(planned.values(), key=lambda t: t.name)))


MAX_PLAN_MOVES = 3
"""The longest relief plan searched for exhaustively (fewest moves first,
then the least memory copied). A longer plan is still found move by move,
largest CPU share first, when no shorter one exists."""

SEARCH_STEPS = 100_000
"""At most this many (guest, target) pairs are weighed per hot node and
cycle. The tightest cluster of eight nodes with forty guests each that was
tried (every peer within 0.015 of the target line) took 81,000 (0.14 s);
without a bound, 32 nodes of 50 guests took up to 5 s, the length of a
cycle. Past the bound the search keeps the best plan found so far, or
falls back to the move-by-move plan. A count, not a clock, so the same
figures give the same plan."""

TARGETS_PER_MOVE = 4
"""Per guest and step of a plan, the search follows at most this many of
the targets that accept it, least loaded first. Which target takes a guest
changes a plan's rank only through that target's room for later moves and
through a return (see `_Search`), and the least loaded targets are
the ones with the most room; following every target made a two-move plan
on 64 nodes weigh all 100,000 `SEARCH_STEPS` in every cycle (1.4 s at
1,000 guests, docs/benchmarks.md 2a), and four is more than a plan of
three moves can use."""

_EPS = 1e-9


@dataclass
class _Search:
    """Every relief plan of up to `MAX_PLAN_MOVES` moves for one hot source,
    keeping the best: fewest moves; then one that moves guests only off the
    hot node (a plan that first makes room elsewhere starts a move on a node
    that is not hot, and buys nothing if the later moves never happen); then
    the fewest guests the balancer moved within `PROACTIVE_REST` (the guest
    cheapest to copy would otherwise be passed round the cluster, paying a
    migration each time and coming back where it was); then one that leaves
    the source at or below `cpu_max - safety_margin`, the line targets must
    keep too (a source left just under `cpu_max` is back above it with the
    next burst); then the fewest guests sent back to a node the balancer
    moved them off within `RETURN_MEMORY` (such a move undoes an earlier
    one); then the least memory copied, since a live migration's
    cost is the memory it copies; then largest CPU share first, so the plan
    is the same for the same figures.

    A plan may start with one move between two other nodes that makes room
    on the first for a guest of the hot node too big for any node's room as
    it is (a cascade). The guest moved to make room must not have been moved
    by the balancer within `PROACTIVE_REST`: that node is not hot, and a
    guest passed on from node to node is how it comes back where it was.
    Every move is checked with every rule against the loads the earlier
    moves of the plan leave behind."""

    view: _View
    source: _Load
    movable: list[Guest]
    targets: list[_Load]
    state: PolicyState
    rng: random.Random
    best: tuple[tuple[object, ...], _Plan] | None = None
    steps: int = 0

    def __post_init__(self) -> None:
        share = self.view.share
        self.direct = [g for g in self.movable if share(g, self.source) >= MIN_BENEFIT]
        self.direct.sort(key=lambda g: (-share(g, self.source), g.vmid))
        self.shares = [share(g, self.source) for g in self.direct]

    def run(self) -> _Plan | None:
        view, source = self.view, self.source
        need = source.cpu - view.config.cpu_max
        # moves between nodes conserve cores: without enough room in all the
        # targets together no plan exists, and the search need not start
        room = sum(max(0.0, view.cpu_limit - t.cpu) * t.maxcpu for t in self.targets)
        if not self.direct or room + _EPS < need * source.maxcpu:
            return None
        planned = {t.name: t for t in self.targets}
        for moves in range(1, MAX_PLAN_MOVES + 1):
            self._direct(moves, 0, source, planned, [], 0)
            if moves > 1 and self.best is None:
                # a cascade ranks after every plan of as many moves off the
                # hot node alone: with one found, none can be better
                self._cascades(moves, planned)
            if self.best is not None:
                return self.best[1]
        return None

    def _record(self, current: _Load, planned: dict[str, _Load],
                moves: list[Migration], order: tuple[int, ...], cascades: int) -> None:
        copied = sum(m.target_after.mem - m.target_before.mem for m in moves)
        view, state = self.view, self.state
        moved_again = sum(1 for m in moves if _resting_vmid(m.vmid, view, state))
        returns = sum(1 for m in moves if _returns(m, view, state))
        key = (cascades, moved_again, current.cpu > view.cpu_limit + _EPS, returns, copied,
               order)
        if self.best is not None and not key < self.best[0]:
            return
        plan = _Plan(source=self.source, moves=tuple(moves), end_cpu=current.cpu,
                     ends_episode=True,
                     targets=tuple(sorted(planned.values(), key=lambda t: t.name)),
                     room_made=cascades)
        self.best = (key, plan)

    def _direct(self, left: int, start: int, current: _Load, planned: dict[str, _Load],
                moves: list[Migration], cascades: int, order: tuple[int, ...] = ()) -> None:
        """Moves off the source: guests from index `start` on, `left` more."""
        limit = self.view.config.cpu_max
        if not current.cpu > limit:
            self._record(current, planned, moves, order, cascades)
            return
        if left == 0:
            return
        need = current.cpu - limit
        by_load = sorted(planned.values(), key=lambda t: (t.cpu, t.name))
        for i in range(start, len(self.direct)):
            if sum(self.shares[i:i + left]) + _EPS < need:
                break  # shares only get smaller from here
            guest = self.direct[i]
            followed = 0
            for target in by_load:
                if self.steps >= SEARCH_STEPS:
                    return
                if followed >= TARGETS_PER_MOVE:
                    break
                self.steps += 1
                if target.cpu + self.view.share(guest, target) > self.view.cpu_limit:
                    continue  # cheap pre-check of the CPU headroom rule
                outcome = _evaluate(self.view, Mode.CPU, guest, current, target, self.state)
                if not isinstance(outcome, Migration):
                    continue
                followed += 1
                after, left_on = outcome.target_after, outcome.source_after
                nxt = dict(planned)
                nxt[target.name] = replace(target, cpu=after.cpu, mem=after.mem)
                self._direct(left - 1, i + 1, replace(current, cpu=left_on.cpu, mem=left_on.mem),
                             nxt, [*moves, outcome], cascades, (*order, i))

    def _cascades(self, moves: int, planned: dict[str, _Load]) -> None:
        """Plans of `moves` that start by moving a guest from one target to
        another, to make room on the first for a guest of the source."""
        view = self.view
        by_load = sorted(planned.values(), key=lambda t: (t.cpu, t.name))
        for room_node in by_load:
            if _warming_veto(view, room_node.name, self.state) is not None:
                continue
            spare = view.cpu_limit - room_node.cpu
            # a guest of the source that does not fit on room_node as it is
            waiting = [view.share(g, room_node) for g in self.direct
                       if view.share(g, room_node) > spare + _EPS]
            if not waiting:
                continue
            movers, _, _ = _candidates(view, Mode.CPU, room_node, self.state, self.rng)
            for mover in movers:
                freed = view.share(mover, room_node)
                if freed < MIN_BENEFIT or not any(w <= spare + freed + _EPS for w in waiting):
                    continue
                if _resting(mover, view, self.state):
                    continue  # a guest just moved here is not moved on to make room
                followed = 0
                for dest in by_load:
                    if self.steps >= SEARCH_STEPS:
                        return
                    if followed >= TARGETS_PER_MOVE:
                        break
                    self.steps += 1
                    if dest.name == room_node.name or \
                            dest.cpu + view.share(mover, dest) > view.cpu_limit:
                        continue
                    outcome = _evaluate(view, Mode.CPU, mover, room_node, dest, self.state)
                    if not isinstance(outcome, Migration):
                        continue
                    followed += 1
                    nxt = dict(planned)
                    left, after = outcome.source_after, outcome.target_after
                    nxt[room_node.name] = replace(room_node, cpu=left.cpu, mem=left.mem)
                    nxt[dest.name] = replace(dest, cpu=after.cpu, mem=after.mem)
                    self._direct(moves - 1, 0, self.source, nxt, [outcome], 1,
                                 (-1 - mover.vmid,))


def _plan_text(plan: _Plan) -> str:
    count = len(plan.moves)
    room = ""
    if plan.room_made and count > 1:
        first = plan.moves[0]
        then = next((m for m in plan.moves[1:] if m.target == first.source), plan.moves[1])
        room = f", making room on {first.source} for vm {then.vmid}"
    return f"move 1 of {count} planned{room}, {plan.source.name} to {_f(plan.end_cpu)}"


def _no_plan_text(plan: _Plan, view: _View) -> str:
    limit = view.cpu_limit
    room = ", ".join(f"{t.name} {_f(max(0.0, limit - t.cpu))}" for t in plan.targets)
    return (f"no set of moves brings {plan.source.name} to cpu_max: the best plan of "
            f"{len(plan.moves)} ends at {_f(plan.end_cpu)} (cpu room below "
            f"{_f(limit)}: {room})")


def _decide_cpu(view: _View, trigger: _Trigger, state: PolicyState, rng: random.Random,
                thresholds: dict[str, float]) -> Decision:
    """CPU mode: start the first move of the fewest that end a source's
    episode; where none can, only a move that cuts starvation on a saturated
    source; else say why, with the numbers."""
    partial: list[_Plan] = []
    first: _Rejection | None = None
    for source in trigger.sources:
        veto = _warming_veto(view, source.name, state)
        if veto is not None:
            return _no_action(veto, thresholds, Mode.CPU, source.name)
        outcome = _plan_relief(view, source, state, rng)
        if isinstance(outcome, _Rejection):
            first = first or outcome
            continue
        if not outcome.ends_episode:
            partial.append(outcome)
            continue
        text = trigger.text if source is trigger.sources[0] else (
            f"{trigger.text}; {source.name} at {_f(source.cpu)} also above")
        reason = f"{text}: {_describe(outcome.moves[0])} ({_plan_text(outcome)})"
        return Decision(reason=reason, mode=Mode.CPU, migration=outcome.moves[0],
                        thresholds=thresholds, sentence=reason, history_source=source.name)
    hottest = trigger.sources[0].name
    for plan in partial:
        if plan.source.cpu >= SATURATED:
            move = plan.moves[0]
            reason = (f"{plan.source.name} saturated (cpu {_f(plan.source.cpu)} >= "
                      f"{_f(SATURATED)}); {_no_plan_text(plan, view)}; cutting starvation: "
                      f"{_describe(move)}")
            return Decision(reason=reason, mode=Mode.CPU, migration=move,
                            thresholds=thresholds, sentence=reason,
                            history_source=plan.source.name)
    if partial:
        return _no_action(f"{trigger.text} but {_no_plan_text(partial[0], view)}",
                          thresholds, Mode.CPU, hottest)
    detail = first.text if first is not None else "no source node"
    return _no_action(f"{trigger.text} but no favourable migration: {detail}", thresholds,
                      Mode.CPU, hottest)


# --- the three checks --------------------------------------------------------


@dataclass(frozen=True)
class _Trigger:
    mode: Mode
    sources: Sequence[_Load]
    text: str  # "pve1 above cpu_max (0.91 > 0.80)"


def _memory_pool(view: _View) -> list[_Load]:
    """Nodes proactive balancing considers: online, not in maintenance, not
    excluded. The mean must describe capacity the balancer may use."""
    return [
        load
        for load in view.loads.values()
        if not load.node.maintenance
        and load.name not in view.config.exclude_nodes
        and load.maxmem > 0
    ]


def _ranked(loads: Sequence[_Load], mode: Mode) -> list[_Load]:
    return sorted(loads, key=lambda load: (-_utilisation(load, mode), load.name))


def _check(view: _View, state: PolicyState) -> _Trigger | str:
    config = view.config
    loads = list(view.loads.values())
    cpu_hot = _ranked([n for n in loads if n.cpu > config.cpu_max], Mode.CPU)
    if cpu_hot and view.estimates.node_cpu_ready:
        top = cpu_hot[0]
        return _Trigger(
            Mode.CPU, cpu_hot, f"{top.name} above cpu_max ({_above(top.cpu, config.cpu_max)})"
        )
    mem_hot = _ranked([n for n in loads if n.mem_fraction > config.memory_max], Mode.MEMORY)
    if mem_hot:
        top = mem_hot[0]
        return _Trigger(
            Mode.MEMORY,
            mem_hot,
            f"{top.name} above memory_max ({_above(top.mem_fraction, config.memory_max)})",
        )
    if cpu_hot:
        top = cpu_hot[0]
        return (
            f"waiting: cpu estimates warming up ({top.name} at {_f(top.cpu)} "
            f"above cpu_max {_f(config.cpu_max)} unconfirmed)"
        )
    mean, threshold = view.memory_mean, view.memory_threshold
    pool = _memory_pool(view)
    above = _ranked([n for n in pool if n.mem_fraction > threshold], Mode.PROACTIVE)
    if len(pool) < 2 or not above:
        return (
            f"balanced: no node above cpu_max {_f(config.cpu_max)}, memory_max "
            f"{_f(config.memory_max)} or memory_threshold {_f(threshold)}"
        )
    trigger = (f"above memory_threshold ({{}} = max({config.proactive_factor:g} x mean "
               f"{_f(mean)}, mean + proactive_margin {_f(config.proactive_margin)}))")
    armed = _armed(view, state)
    ready = [n for n in _ranked(pool, Mode.PROACTIVE) if n.name in armed]
    if ready:
        top = ready[0]
        return _Trigger(Mode.PROACTIVE, ready,
                        f"{top.name} " + trigger.format(_above(top.mem_fraction, threshold)))
    top = above[0]
    why = _not_at_risk(view, state, top)
    return (f"balanced: {top.name} " + trigger.format(_above(top.mem_fraction, threshold))
            + f" but {why}")


def _risk_floor(view: _View) -> float:
    """Memory fraction from which a node is close enough to `memory_max` for
    a proactive move to prevent something."""
    return view.config.memory_max - view.config.proactive_band


def _at_risk(view: _View, load: _Load, slack: float = 0.0) -> bool:
    """Above the proactive threshold and within the risk band of memory_max
    (both bars lowered by `slack` for a node already armed)."""
    return (load.mem_fraction > view.memory_threshold - slack
            and load.mem_fraction >= _risk_floor(view) - slack)


def _armed(view: _View, state: PolicyState) -> set[str]:
    """Pool nodes whose memory has been at risk for `proactive_hold`."""
    now, hold = view.snapshot.time, view.config.proactive_hold
    out: set[str] = set()
    for load in _memory_pool(view):
        # a node at risk now that nobody tracked yet (`plan`, a new term)
        # has been at risk for 0 s: enough only when the hold is 0
        since = state.pressure_since.get(load.name, now if _at_risk(view, load) else None)
        if since is not None and now - since >= hold and \
                _at_risk(view, load, PROACTIVE_HYSTERESIS):
            out.add(load.name)
    return out


def _not_at_risk(view: _View, state: PolicyState, load: _Load) -> str:
    floor = _risk_floor(view)
    if load.mem_fraction < floor:
        return (f"{_f(view.config.memory_max - load.mem_fraction)} below memory_max, outside "
                f"the risk band (memory_max - proactive_band {_f(floor)})")
    since = state.pressure_since.get(load.name, view.snapshot.time)
    held = max(0.0, view.snapshot.time - since)
    return (f"at risk for {held:.0f} s of proactive_hold "
            f"{view.config.proactive_hold:.0f} s")


def track_memory_pressure(previous: Mapping[str, float], snapshot: Snapshot,
                          config: Config) -> dict[str, float]:
    """Since when each node's memory has been at risk (above the proactive
    threshold and within `proactive_band` of memory_max), as of `snapshot`.
    The agent keeps the result between cycles and passes it back in
    `PolicyState.pressure_since`. A node stays at risk until it is
    `PROACTIVE_HYSTERESIS` below both bars: hysteresis against flapping."""
    view = _View.build(snapshot, Estimates(), config)
    out: dict[str, float] = {}
    for load in _memory_pool(view):
        since = previous.get(load.name)
        if since is not None and _at_risk(view, load, PROACTIVE_HYSTERESIS):
            out[load.name] = since
        elif _at_risk(view, load):
            out[load.name] = snapshot.time
    return out


def _thresholds(view: _View) -> dict[str, float]:
    config = view.config
    return {
        "cpu_max": config.cpu_max,
        "memory_max": config.memory_max,
        "safety_margin": config.safety_margin,
        "cpu_target_max": view.cpu_limit,
        "memory_target_max": view.memory_limit,
        "proactive_factor": config.proactive_factor,
        "proactive_margin": config.proactive_margin,
        "memory_mean": view.memory_mean,
        "memory_threshold": view.memory_threshold,
        "min_benefit": MIN_BENEFIT,
    }


def _describe(migration: Migration) -> str:
    src, dst = migration.source_before, migration.target_before
    src_after, dst_after = migration.source_after, migration.target_after
    if migration.mode is Mode.CPU:
        what = "cpu"
        numbers = (src.cpu, src_after.cpu, dst.cpu, dst_after.cpu)
    else:
        what = "memory"
        numbers = (src.mem_fraction, src_after.mem_fraction, dst.mem_fraction,
                   dst_after.mem_fraction)
    name = f" ({migration.name})" if migration.name else ""
    return (
        f"migrate vm {migration.vmid}{name} from {migration.source} to {migration.target}: "
        f"{what} {_f(numbers[0])}->{_f(numbers[1])} on {migration.source}, "
        f"{_f(numbers[2])}->{_f(numbers[3])} on {migration.target}"
    )


def _no_action(reason: str, thresholds: dict[str, float], mode: Mode | None = None,
               history_source: str | None = None) -> Decision:
    return Decision(reason=reason, mode=mode, thresholds=thresholds,
                    sentence=f"no action: {reason}", history_source=history_source)


def _warming_veto(view: _View, source: str, state: PolicyState) -> str | None:
    """Why a CPU move off `source` must wait for guest CPU history, if it must."""
    vms = [g.vmid for g in view.snapshot.guests
           if g.node == source and g.kind == "qemu" and g.status == "running"]
    cold = [v for v in vms if v in state.warming]
    if not cold:
        return None
    return (f"{source} above cpu_max but the CPU history of {len(cold)} of {len(vms)} VMs "
            "there is still warming up (no RRD data)")


def gave_up(decision: Decision, attempts: int) -> Decision:
    """The decision when `attempts` chosen guests in a row turned out not to
    move live (PVE's preconditions said so): stop asking for this cycle."""
    return _no_action(f"gave up after {attempts} candidates turned out unmovable "
                      f"({decision.reason})", decision.thresholds, decision.mode)


def decide(
    snapshot: Snapshot,
    estimates: Estimates,
    config: Config,
    state: PolicyState,
    rng: random.Random,
) -> Decision:
    """The one migration to start now, or none, with the reason and numbers."""
    view = _View.build(snapshot, estimates, config)
    thresholds = _thresholds(view)
    if snapshot.time < state.settle_until:
        wait = (f"waiting {state.settle_until - snapshot.time:.0f} s for node statistics to "
                f"refresh after {state.settle_after}")
        return Decision(reason=wait, thresholds=thresholds, sentence=wait)
    guard = _guard(snapshot, config)
    if guard is not None:
        return _no_action(guard, thresholds)
    if not view.loads:
        return _no_action("waiting: no online node", thresholds)

    trigger = _check(view, state)
    if isinstance(trigger, str):
        return _no_action(trigger, thresholds)

    if trigger.mode is Mode.CPU:
        return _decide_cpu(view, trigger, state, rng, thresholds)
    first: _Rejection | None = None
    for source in trigger.sources:
        outcome = _try_source(view, trigger.mode, source, state, rng)
        if isinstance(outcome, Migration):
            text = trigger.text if source is trigger.sources[0] else (
                f"{trigger.text}; {source.name} at "
                f"{_f(_utilisation(source, trigger.mode))} also above"
            )
            reason = f"{text}: {_describe(outcome)}"
            return Decision(
                reason=reason,
                mode=trigger.mode,
                migration=outcome,
                thresholds=thresholds,
                sentence=reason,
            )
        if first is None:
            first = outcome
    detail = first.text if first is not None else "no source node"
    return _no_action(f"{trigger.text} but no favourable migration: {detail}", thresholds,
                      trigger.mode)
