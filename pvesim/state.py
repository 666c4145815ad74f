"""The simulated cluster's entities. Plain mutable records; the behaviour
lives in the simulator's parts (`pvesim.physics`, `tasks`, `migrations`,
`ha`, `backups`, `outages`), which `pvesim.cluster.Simulator` composes and
guards with its lock.

Two views of every number exist on purpose: the *live* values the physics
computes each step, and the *published* values pvestatd last wrote (what the
API shows). The API never reads live values, so it lags reality like PVE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvesim.demand import Demand

GIB = 1024**3
MIB = 1024**2


@dataclass
class Rrd:
    """Minute buckets of published samples: minute start → [n, sum per field,
    max per field]. Fields are fixed per entity kind by the API layer."""

    minutes: dict[int, list[float]] = field(default_factory=dict)
    nfields: int = 0

    def add(self, t: float, values: list[float]) -> None:
        m = int(t // 60) * 60
        b = self.minutes.get(m)
        if b is None:
            self.nfields = len(values)
            b = [0.0] + [0.0] * len(values) + [float("-inf")] * len(values)
            self.minutes[m] = b
        n = self.nfields
        b[0] += 1
        for i, v in enumerate(values):
            b[1 + i] += v
            b[1 + n + i] = max(b[1 + n + i], v)

    def prune(self, before: float) -> None:
        cut = int(before // 60) * 60
        if self.minutes and next(iter(self.minutes)) < cut:
            for k in [k for k in self.minutes if k < cut]:
                del self.minutes[k]


@dataclass
class Stall:
    """Pressure stall information (PSI) the way the kernel reports it: the
    share of time some (or all) of an entity's tasks waited for CPU or
    memory. While accumulating, each field holds share x seconds; once
    published, the percentage over the last pvestatd round (PVE's
    `pressure*` fields are the kernel's avg10 percentages).

    The physics has no I/O model, so I/O pressure stays zero."""

    cpu_some: float = 0.0
    cpu_full: float = 0.0
    mem_some: float = 0.0
    mem_full: float = 0.0

    def add(self, dt: float, cpu: float, mem: float) -> None:
        """Integrate `dt` seconds at shares `cpu` and `mem` (0..1) of
        "some" stall; "full" (every task stalled at once) is taken as the
        product of independent waits, share squared."""
        self.cpu_some += cpu * dt
        self.cpu_full += cpu * cpu * dt
        self.mem_some += mem * dt
        self.mem_full += mem * mem * dt

    def percent_over(self, seconds: float) -> Stall:
        if seconds <= 0:
            return Stall()
        k = 100.0 / seconds
        return Stall(self.cpu_some * k, self.cpu_full * k, self.mem_some * k, self.mem_full * k)


@dataclass
class Node:
    name: str
    nodeid: int
    cores: int
    memory: int  # bytes
    base_mem: int  # host use without guests (kernel, pve services, ZFS ARC…)
    ip: str
    cpu_model: str = "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    sockets: int = 2
    powered: bool = True
    network: bool = True
    maintenance: bool = False
    boot_time: float = 0.0
    stat_phase: float = 0.0  # pvestatd runs at boot-relative offsets
    # live physics (last step)
    live_demand: float = 0.0  # cores wanted
    live_cpu: float = 0.0  # cores delivered
    live_mem: int = 0  # bytes used incl. base and migration copies
    # accumulation since the last publish
    acc_cpu: float = 0.0  # core-seconds delivered
    acc_time: float = 0.0
    acc_stall: Stall = field(default_factory=Stall)  # PSI, integrated
    # published by pvestatd
    pub_cpu: float = 0.0
    pub_mem: int = 0
    pub_time: float = 0.0
    pub_loadavg: float = 0.0
    pub_stall: Stall = field(default_factory=Stall)  # PSI, percent
    next_publish: float = 0.0
    rrd: Rrd = field(default_factory=Rrd)

    @property
    def reachable(self) -> bool:
        return self.powered and self.network


@dataclass
class Guest:
    vmid: int
    name: str
    type: str  # "qemu" | "lxc"
    node: str
    vcpus: int
    maxmem: int
    demand: Demand
    status: str = "running"  # running | stopped
    template: bool = False
    lock: str | None = None
    tags: list[str] = field(default_factory=list)
    ha: bool = False
    ha_state: str = "started"  # HA request state: started | stopped | ...
    local_disks: list[dict[str, object]] = field(default_factory=list)
    local_resources: list[str] = field(default_factory=list)
    maxdisk: int = 32 * GIB
    pool: str | None = None
    start_time: float = 0.0
    pid: int = 0
    # live physics
    live_demand: float = 0.0
    live_cpu: float = 0.0
    live_mem: int = 0
    acc_cpu: float = 0.0
    acc_time: float = 0.0
    acc_stall: Stall = field(default_factory=Stall)
    # published
    pub_cpu: float = 0.0
    pub_mem: int = 0
    pub_memhost: int = 0
    pub_time: float = 0.0
    pub_stall: Stall = field(default_factory=Stall)
    rrd: Rrd = field(default_factory=Rrd)
    # bookkeeping for HA recovery / ping-pong
    fenced_since: float | None = None

    @property
    def sid(self) -> str:
        return f"{'vm' if self.type == 'qemu' else 'ct'}:{self.vmid}"

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass
class Task:
    upid: str
    node: str
    type: str
    id: str
    user: str
    pid: int
    pstart: int
    starttime: int
    endtime: int | None = None
    exitstatus: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.endtime is None


@dataclass
class Migration:
    vmid: int
    source: str
    target: str
    start: float
    end: float  # planned completion
    mem_bytes: int  # memory held on the target while copying
    bytes_total: int  # what goes over the wire (memory + dirty pages + disks)
    task: Task
    online: bool
    fail_at: float | None = None
    fail_reason: str = ""


@dataclass
class PendingHaMigration:
    """A migration the HA stack will start (CRM/LRM delay), from a
    `hamigrate` request or from maintenance/recovery."""

    vmid: int
    target: str
    at: float
    reason: str  # "request" | "maintenance" | "rebalance"


@dataclass
class HaRule:
    rule: str
    type: str  # node-affinity | resource-affinity
    resources: list[str]  # sids "vm:100"
    nodes: list[str] = field(default_factory=list)  # "pve1" or "pve1:2" (priority)
    affinity: str | None = None  # positive | negative (resource-affinity)
    strict: bool = False
    disable: bool = False
    comment: str | None = None

    def node_names(self) -> list[str]:
        return [n.split(":", 1)[0] for n in self.nodes]


@dataclass
class BackupJob:
    id: str
    schedule: str
    enabled: bool = True
    node: str | None = None  # None = all nodes
    vmids: list[int] | None = None  # None = all guests
    storage: str = "pbs"
    mode: str = "snapshot"
    seconds_per_guest: float = 60.0
    comment: str | None = None


@dataclass
class Token:
    token_id: str  # user@realm!name
    secret: str
    acl: dict[str, set[str]]  # path -> privileges (propagating)

    @property
    def user(self) -> str:
        return self.token_id.split("!", 1)[0]

    def privs_at(self, path: str) -> set[str]:
        """Effective privileges on `path`: the most specific ACL path that is a
        prefix of it wins (PVE propagates ACLs downwards)."""
        best: str | None = None
        for p in self.acl:
            if (p in ("/", path) or path.startswith(p.rstrip("/") + "/")) and (
                best is None or len(p) > len(best)
            ):
                best = p
        return set() if best is None else set(self.acl[best])

    def has(self, path: str, priv: str) -> bool:
        return priv in self.privs_at(path)


ALL_PRIVILEGES = frozenset(
    {
        "Datastore.Allocate",
        "Datastore.AllocateSpace",
        "Datastore.AllocateTemplate",
        "Datastore.Audit",
        "Group.Allocate",
        "Mapping.Audit",
        "Mapping.Modify",
        "Mapping.Use",
        "Permissions.Modify",
        "Pool.Allocate",
        "Pool.Audit",
        "Realm.Allocate",
        "Realm.AllocateUser",
        "SDN.Allocate",
        "SDN.Audit",
        "SDN.Use",
        "Sys.AccessNetwork",
        "Sys.Audit",
        "Sys.Console",
        "Sys.Incoming",
        "Sys.Modify",
        "Sys.PowerMgmt",
        "Sys.Syslog",
        "User.Modify",
        "VM.Allocate",
        "VM.Audit",
        "VM.Backup",
        "VM.Clone",
        "VM.Config.CDROM",
        "VM.Config.CPU",
        "VM.Config.Cloudinit",
        "VM.Config.Disk",
        "VM.Config.HWType",
        "VM.Config.Memory",
        "VM.Config.Network",
        "VM.Config.Options",
        "VM.Console",
        "VM.GuestAgent.Audit",
        "VM.GuestAgent.FileRead",
        "VM.GuestAgent.FileSystemMgmt",
        "VM.GuestAgent.FileWrite",
        "VM.GuestAgent.Unrestricted",
        "VM.Migrate",
        "VM.PowerMgmt",
        "VM.Replicate",
        "VM.Snapshot",
        "VM.Snapshot.Rollback",
    }
)
