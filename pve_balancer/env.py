"""The agent's one door to the outside world.

Everything the balancer loop needs from outside its own memory goes through
one `Environment`: the clock, the cluster as the PVE API shows it (sample,
RRD history, migrate preconditions, starting a migration, following its
task), the status it publishes for operators, and the election that says
whether it may act at all. `PveEnvironment` is the real one: proxmoxer over
verified HTTPS, the pmxcfs lock, `status.json` in /etc/pve.

The seam is for clarity and typing, not for mocking: tests and benchmarks
build the same `PveEnvironment`, with the real client whose requests the
simulator answers in-process and a clock that is the simulator's virtual
time, so what they exercise is what runs on a node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from . import fence
from .budget import CYCLE_BUDGET, Budget, BudgetSpentError
from .leadership import Election
from .model import Preconditions, Snapshot, Task
from .pve import DEFAULT_TIMEOUT, PveClient
from .status import DecisionRecord, NodeRecord, StatusWriter, decisions_from, read_status


class Clock(Protocol):
    """Time in unix seconds (comparable with PVE's timestamps) and a way to
    let it pass; virtual in the simulator."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time, as on a node."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class Environment(Protocol):
    """What the agent may ask of, and do to, the world. Cluster methods
    raise `pve.PveError` when the API cannot be asked or answers nonsense;
    the election and the status methods never raise."""

    @property
    def node(self) -> str:
        """The node this agent runs on (whose API it talks to)."""
        ...

    @property
    def election(self) -> Election: ...

    @property
    def api_requests(self) -> int:
        """API requests made so far (for `plan` and the benchmarks)."""
        ...

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def begin_cycle(self) -> None:
        """A cycle starts: its requests share one time budget from now on
        (`budget.Budget`); a request the budget cannot afford raises
        `budget.BudgetSpentError`."""
        ...

    def sample(self, now: float, slow: int | None = None) -> tuple[Snapshot, tuple[Task, ...]]:
        """The cluster now, and the task list it was built from; at most
        `slow` of the slow facts are refreshed (None: all that are due)."""
        ...

    def node_cpu_history(self, node: str, now: float) -> list[tuple[float, float]]: ...

    def guest_cpu_history(self, node: str, vmid: int,
                          now: float) -> list[tuple[float, float]]: ...

    def preconditions(self, node: str, vmid: int, target: str) -> Preconditions: ...

    def guest_tags(self, node: str, vmid: int) -> frozenset[str]:
        """The tags of a guest's own configuration."""
        ...

    def migrate(self, node: str, vmid: int, target: str) -> str:
        """Start a live migration; the UPID of its task. Leadership is
        re-confirmed immediately before the POST (`fence.check`): raises
        `fence.FencedError` when it cannot be, and `budget.BudgetSpentError`
        when the cycle's budget could not give the POST its whole timeout;
        in both cases nothing was sent."""
        ...

    def task_status(self, upid: str) -> Task: ...

    def begin_term(self, now: float) -> None:
        """This agent just became leader: drop what an earlier term cached
        and continue the published history of the previous leader."""
        ...

    def publish_nodes(self, nodes: Sequence[NodeRecord],
                      thresholds: Mapping[str, float]) -> None:
        """The node view operators see in `status` (written with the cycle)."""
        ...

    def record_decision(self, record: DecisionRecord) -> None: ...

    def publish_cycle(self, now: float, sentence: str) -> None:
        """The leader's cycle ended with `sentence`; publish when due."""
        ...

    def publish_release(self, now: float) -> None:
        """The leader stops cleanly (it still holds the lock): publish that
        nobody leads now."""
        ...


class PveEnvironment:
    """The real environment: a node's PVE API, its clock, its election.

    `connect` opens the API client; it is called again on every cycle until
    it succeeds, so a token that appears after start (`pve-balancer setup`
    on another node) is picked up without a restart.
    """

    def __init__(self, *, node: str, connect: Callable[[], PveClient], election: Election,
                 clock: Clock | None = None, status: StatusWriter | None = None,
                 cycle_budget: float = CYCLE_BUDGET) -> None:
        self._node = node
        self.cycle_budget = cycle_budget
        self.budget: Budget | None = None
        self._connect = connect
        self._client: PveClient | None = None
        self._election = election
        self._clock: Clock = clock or SystemClock()
        self.status = status

    # -- identity, time, election

    @property
    def node(self) -> str:
        return self._node

    @property
    def election(self) -> Election:
        return self._election

    @property
    def api_requests(self) -> int:
        return self._client.requests if self._client is not None else 0

    def now(self) -> float:
        return self._clock.now()

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)

    # -- the cluster

    def begin_cycle(self) -> None:
        self.budget = Budget(self._clock.now, self.cycle_budget)
        if self._client is not None:
            self._client.budget = self.budget

    @property
    def client(self) -> PveClient:
        if self._client is None:
            self._client = self._connect()
            self._client.budget = self.budget
        return self._client

    def sample(self, now: float, slow: int | None = None) -> tuple[Snapshot, tuple[Task, ...]]:
        return self.client.sample(now, slow)

    def node_cpu_history(self, node: str, now: float) -> list[tuple[float, float]]:
        return self.client.node_cpu_history(node, now)

    def guest_cpu_history(self, node: str, vmid: int,
                          now: float) -> list[tuple[float, float]]:
        return self.client.guest_cpu_history(node, vmid, now)

    def preconditions(self, node: str, vmid: int, target: str) -> Preconditions:
        return self.client.preconditions(node, vmid, target)

    def guest_tags(self, node: str, vmid: int) -> frozenset[str]:
        return self.client.guest_tags(node, vmid)

    def migrate(self, node: str, vmid: int, target: str) -> str:
        client = self.client
        cap = client.timeout or DEFAULT_TIMEOUT
        post = f"POST /nodes/{node}/qemu/{vmid}/migrate"

        def last_check() -> None:
            budget = self.budget
            if budget is not None and not budget.post_allowed(cap):
                raise BudgetSpentError(budget.seconds, budget.spent(), post, sent=False)
            fence.check(self._election, self._clock.now)

        return client.migrate(node, vmid, target, fence=last_check)

    def task_status(self, upid: str) -> Task:
        return self.client.task_status(upid)

    # -- what the leader publishes

    def begin_term(self, now: float) -> None:
        if self._client is not None:
            self._client.invalidate_slow()
        if self.status is None:
            return
        previous = read_status(self.status.path)
        if previous is not None and not self.status.writes:
            self.status.seed_decisions(decisions_from(previous))
        self.status.became_leader(now)

    def publish_nodes(self, nodes: Sequence[NodeRecord],
                      thresholds: Mapping[str, float]) -> None:
        if self.status is not None:
            self.status.update(nodes, thresholds)

    def record_decision(self, record: DecisionRecord) -> None:
        if self.status is not None:
            self.status.record(record)

    def publish_cycle(self, now: float, sentence: str) -> None:
        if self.status is not None:
            self.status.note(sentence)
            self.status.maybe_write(now)

    def publish_release(self, now: float) -> None:
        if self.status is not None:
            self.status.release(now)
