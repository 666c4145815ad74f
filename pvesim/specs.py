"""The parts of a scenario: plain records that `pvesim.scenario_parse`
fills from YAML and the simulator builds the cluster from. Defaults here are
the defaults of the scenario format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names file and key."""



@dataclass
class NodeSpec:
    name: str
    cores: int = 32
    memory: int = 128 * 1024**3
    base_memory: int = 4 * 1024**3
    powered: bool = True
    network: bool = True
    maintenance: bool = False


@dataclass
class DemandSpec:
    kind: str  # constant | steps | trace
    cpu: float = 0.0
    mem: int | None = None  # None = half of maxmem
    steps: list[tuple[float, float | None, int | None]] = field(default_factory=list)
    spikes: list[tuple[float, float, float | None, int | None]] = field(default_factory=list)
    trace_vm: int = 0
    offset: float = 0.0
    cpu_scale: float = 1.0
    mem_scale: float = 1.0


@dataclass
class GuestSpec:
    vmid: int
    node: str
    name: str = ""
    type: str = "qemu"
    cores: int = 2
    memory: int = 4 * 1024**3
    status: str = "running"
    template: bool = False
    lock: str | None = None
    tags: list[str] = field(default_factory=list)
    ha: bool = False
    local_disks: list[dict[str, Any]] = field(default_factory=list)
    local_resources: list[str] = field(default_factory=list)
    pool: str | None = None
    demand: DemandSpec = field(default_factory=lambda: DemandSpec("constant"))


@dataclass
class GenerateSpec:
    count: int
    vm_ids: list[int] | None = None
    seed: int | None = None
    vmid_start: int = 1000
    nodes: list[str] | None = None
    placement: str = "round_robin"  # round_robin | random
    random_offset: bool = True
    cpu_scale: float = 1.0
    mem_scale: float = 1.0
    max_memory: int | None = None  # cap a trace VM's provisioned memory
    ha_fraction: float = 0.0
    name_prefix: str = "bb"


@dataclass
class RuleSpec:
    rule: str
    type: str
    resources: list[str]
    nodes: list[str] = field(default_factory=list)
    affinity: str | None = None
    strict: bool = False
    disable: bool = False
    comment: str | None = None


@dataclass
class BackupSpec:
    id: str
    schedule: str
    enabled: bool = True
    node: str | None = None
    vmids: list[int] | None = None
    storage: str = "pbs"
    mode: str = "snapshot"
    seconds_per_guest: float = 60.0
    comment: str | None = None


@dataclass
class TokenSpec:
    token_id: str
    secret: str | None
    acl: dict[str, list[str]]


@dataclass
class EventSpec:
    at: float  # seconds after start
    action: str
    args: dict[str, Any]


@dataclass
class SimParams:
    step: float = 5.0  # physics step for advance()
    stat_interval: float = 10.0  # pvestatd cadence
    migration_bandwidth: float = 1024.0**3  # bytes/s
    dirty_rate_per_core: float = 64.0 * 1024**2  # bytes/s dirtied per busy core
    migration_setup: float = 2.0  # seconds before copying starts
    migration_failure_rate: float = 0.0
    ha_delay: float = 5.0  # hamigrate → qmigrate start (CRM + LRM rounds)
    fence_delay: float = 120.0  # node lost → HA guests recovered elsewhere
    self_fence_delay: float = 60.0  # isolated node's watchdog kills its HA guests
    task_history: int = 500  # finished tasks kept
    rrd_keep: float = 8 * 86400.0
