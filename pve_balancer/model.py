"""Plain data that flows between the agent's parts: the cluster as sampled,
the smoothed estimates, and the decision taken.

Everything here is frozen and free of I/O, so the policy can be a pure
function of these values and tests can build them directly. `pve.py` is the
only place that turns PVE's JSON into these types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import cast


class Mode(str, Enum):
    """Which of the three checks fired this cycle (POLICY.md, in order)."""

    CPU = "cpu"
    MEMORY = "memory"
    PROACTIVE = "proactive"


@dataclass(frozen=True)
class Node:
    """A cluster node as `/cluster/resources` and HA status describe it.

    `cpu` is PVE's raw sample (fraction of all host cores); the smoothed value
    lives in `Estimates`, not here.
    """

    name: str
    online: bool
    cpu: float
    maxcpu: int
    mem: int
    maxmem: int
    maintenance: bool = False

    @property
    def mem_fraction(self) -> float:
        return self.mem / self.maxmem if self.maxmem > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Guest:
    """A VM or container. `mem` is host-side used bytes (`memhost` when PVE
    reports it, else `mem`): that is what the node actually gives up when the
    guest leaves.

    Slotted (a cluster of 10,000 guests holds 10,000 of them per sample);
    the parser builds them through `make_guest`, which is several times
    cheaper than this class's own `__init__`."""

    vmid: int
    name: str
    node: str
    kind: str  # "qemu" or "lxc"
    status: str  # "running", "stopped", ...
    cpu: float  # fraction of its own vCPUs
    maxcpu: float
    mem: int
    maxmem: int
    template: bool = False
    lock: str | None = None
    tags: frozenset[str] = frozenset()
    ha_managed: bool = False
    tags_known: bool = True
    """False when `/cluster/resources` had no `tags` field for it: PVE
    omits the field for a guest without tags, and so does a half-written
    answer; before such a guest moves, its config says which it is."""


class _GuestBuilder:
    """A mutable twin of `Guest` with the very same slots, so that an
    instance can become a `Guest` by `__class__` assignment once filled.

    A frozen dataclass's `__init__` must store each of its 14 fields through
    `object.__setattr__` (its own `__setattr__` refuses): about 2 µs per
    guest, a fifth of the agent's whole decision at 10,000 guests. Plain
    slot stores on this twin and one class switch cost about 0.25 µs; what
    comes out is an ordinary frozen `Guest` (same equality, hash, repr,
    `dataclasses.replace`), and nothing else ever sees the twin."""

    __slots__ = ("cpu", "ha_managed", "kind", "lock", "maxcpu", "maxmem", "mem", "name", "node",
                 "status", "tags", "tags_known", "template", "vmid")

    def __init__(self, vmid: int, name: str, node: str, kind: str, status: str, cpu: float,
                 maxcpu: float, mem: int, maxmem: int, template: bool, lock: str | None,
                 tags: frozenset[str], ha_managed: bool, tags_known: bool) -> None:
        self.vmid = vmid
        self.name = name
        self.node = node
        self.kind = kind
        self.status = status
        self.cpu = cpu
        self.maxcpu = maxcpu
        self.mem = mem
        self.maxmem = maxmem
        self.template = template
        self.lock = lock
        self.tags = tags
        self.ha_managed = ha_managed
        self.tags_known = tags_known
        self.__class__ = Guest  # type: ignore[assignment]  # noqa: PLE0237 (layouts match)


if sorted(_GuestBuilder.__slots__) != sorted(f.name for f in fields(Guest)):
    raise TypeError("model._GuestBuilder must have exactly Guest's fields as slots")

make_guest = cast(
    Callable[[int, str, str, str, str, float, float, int, int, bool, str | None,
              frozenset[str], bool, bool], Guest],
    _GuestBuilder)
"""`Guest(vmid, name, node, kind, status, cpu, maxcpu, mem, maxmem, template,
lock, tags, ha_managed, tags_known)`, every field positional and required,
for the parser's loop over every guest of every sample."""


@dataclass(frozen=True)
class AffinityRule:
    """An HA rule of PVE 9 (`/cluster/ha/rules`), reduced to what placement
    needs. `vmids` are the guests named in `resources` (`vm:100` → 100)."""

    rule_id: str
    kind: str  # "node-affinity" or "resource-affinity"
    vmids: frozenset[int]
    nodes: frozenset[str] = frozenset()
    affinity: str = "positive"  # resource-affinity only: "positive"/"negative"
    enabled: bool = True


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the cluster, taken at `time` (seconds, the
    agent's clock). `migrations_running` names every migration in flight
    anywhere in the cluster (task UPIDs or `vmid` with `lock: migrate`),
    whoever started it. `next_backup_in` is seconds until the next scheduled
    backup job starts (None when there is none); `backup_running` is true
    while any vzdump task runs."""

    time: float
    nodes: tuple[Node, ...]
    guests: tuple[Guest, ...]
    rules: tuple[AffinityRule, ...] = ()
    ha_auto_rebalance: bool = False
    migrations_running: tuple[str, ...] = ()
    backup_running: bool = False
    next_backup_in: float | None = None
    missing: tuple[str, ...] = ()
    """Facts the policy needs that were not read fresh ("HA rules (last read
    130 s ago: ...)"): no migration is started on this snapshot."""
    unreadable: tuple[str, ...] = ()
    """Those of `missing` whose last read failed or came back incomplete
    (the others were not asked yet: a term just began)."""

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def in_flight(self) -> tuple[str, ...]:
        """Every sign of a migration under way: the running tasks, then the
        guests PVE has locked for one (a task list can lag the lock)."""
        locked = tuple(f"vm {g.vmid} locked migrate" for g in self.guests
                       if g.lock == "migrate")
        return (*self.migrations_running, *locked)


@dataclass(frozen=True)
class Estimates:
    """Smoothed CPU (1-minute EMAs) keyed by node name and by vmid.

    `node_cpu_ready` is false while the node EMAs are neither warmed from RRD
    nor backed by a full minute of samples: CPU mode must not fire on them.
    """

    node_cpu: dict[str, float] = field(default_factory=dict)
    guest_cpu: dict[int, float] = field(default_factory=dict)
    node_cpu_ready: bool = True


@dataclass(frozen=True)
class Usage:
    """A node's CPU (EMA fraction) and memory (bytes and fraction)."""

    cpu: float
    mem: int
    mem_fraction: float


@dataclass(frozen=True)
class Migration:
    """A migration the policy wants, with the numbers that justified it."""

    vmid: int
    name: str
    source: str
    target: str
    mode: Mode
    source_before: Usage
    source_after: Usage
    target_before: Usage
    target_after: Usage
    ha_managed: bool = False


@dataclass(frozen=True)
class Decision:
    """The outcome of one policy evaluation: a migration or none, always with
    a one-line human reason.

    `sentence` is the journal line for it, worded by the policy (a decision
    without a migration says "no action: ..."); `history_source` names the
    node whose guests' CPU history this CPU decision rests on, so the agent
    fetches that history from RRD and asks again before acting."""

    reason: str
    mode: Mode | None = None
    migration: Migration | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    sentence: str = ""
    history_source: str | None = None


@dataclass(frozen=True)
class Task:
    """One entry of `/cluster/tasks` (or a task status)."""

    upid: str
    node: str
    kind: str
    vmid: str
    running: bool
    exitstatus: str | None = None
    starttime: float = 0.0
    endtime: float | None = None


@dataclass(frozen=True)
class Preconditions:
    """What `GET /nodes/{node}/qemu/{vmid}/migrate` says about a move."""

    vmid: int
    local_disks: tuple[str, ...] = ()
    local_resources: tuple[str, ...] = ()
    allowed_nodes: frozenset[str] | None = None
    not_allowed: frozenset[str] = frozenset()

    @property
    def unmovable(self) -> str | None:
        """Why the guest can never move live (None when it can)."""
        if self.local_resources:
            return "local resources " + ",".join(self.local_resources)
        if self.local_disks:
            return "local disks " + ",".join(self.local_disks)
        return None

    def blocks_target(self, target: str) -> bool:
        if target in self.not_allowed:
            return True
        return self.allowed_nodes is not None and target not in self.allowed_nodes
