"""One balancer cycle: election → sample → smooth → follow or decide → act.

`Agent.run_cycle()` is the whole behaviour of the daemon in one call. It
returns a `CycleResult` (the journal sentence, its level and fields; also
what the scenario tests compare) and never raises. Everything outside the
agent's memory comes through one `env.Environment`, so the same agent runs
on a node in real time and in the simulator's virtual time.

Rules this module enforces around the pure policy:
- Only the leader touches the API; a standby cycle is the election only.
- One migration at a time, followed to its real end (see `executor`); the
  policy then holds decisions back until PVE's node statistics have caught
  up (`policy.PolicyState.settle_until`), with the EMAs shifted by the moved
  guest, so no decision is taken on pre-migration data.
- Moved and failed guests go into cooldown; nothing is retried in a loop.
- Guests that cannot move live (local disks or resources) are learnt from
  PVE's migrate preconditions before the first attempt and remembered.
- Leadership is re-confirmed immediately before every POST (`fence`).
- The requests of one cycle share a time budget (`budget`); a cycle that
  runs out of it ends with "no action".
- After repeated failed migrations the circuit breaker (`breaker`) stops
  all migrations until an operator acts or its window passes.
- The configuration is re-read when the file changes (or on demand, e.g.
  SIGHUP); a broken file keeps the last good configuration.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from . import executor
from .breaker import Breaker
from .budget import BudgetSpentError
from .config import Config, ConfigSource
from .ema import CpuEstimator
from .env import Environment
from .executor import InFlight
from .fence import FencedError
from .model import Decision, Estimates, Migration, Preconditions, Snapshot, Task
from .policy import (
    PROACTIVE_REST,
    RETURN_MEMORY,
    PolicyState,
    decide,
    gave_up,
    track_memory_pressure,
)
from .pve import MIGRATION_TASK_TYPES, PveError
from .status import DecisionRecord, NodeRecord

log = logging.getLogger(__name__)

STATS_SETTLE = 20.0
"""Seconds without decisions after any migration ends (whoever started it,
followed or not): PVE refreshes node statistics about every 10 s and its
API gives no time stamp for them, so two refreshes after the task's
`endtime` make sure memory figures show the guest where it now is."""

SLOW_PER_CYCLE = 1
"""Slow facts (`pve.SLOW_FACTS`) refreshed per cycle at most: a term start
costs no more requests than any other cycle; the facts are read over the
first cycles, and no decision is taken before all are."""

LOST_ANSWER_LOOKBACK = 60.0
"""A migrate POST whose answer was lost is matched with a migration task
of the same guest started at most this long before it (clocks of a
cluster agree within seconds; the guest was in no cooldown, so no earlier
move of it is that recent)."""

HA_PENDING = 60.0
"""How long an HA migration request (`hamigrate`, which ends at once) that
no `qmigrate` of the guest followed yet counts as a migration in progress:
the HA manager starts the real move one or two 10 s rounds later."""

UNMOVABLE_TTL = 3600.0
"""How long a "cannot move live" answer is trusted before asking again (an
operator may detach the local disk)."""

TARGET_BLOCK_TTL = 300.0
"""How long a guest whose chosen target PVE refused is left alone."""

PRECONDITIONS_TTL = 600.0
"""How long a "can move" preconditions answer is reused."""

GUEST_WARMUP = 60.0
"""Seconds of live samples that make an unseeded guest EMA trustworthy."""

MAX_REDECIDE = 5
"""Decisions per cycle when candidates turn out unmovable (bounded work)."""


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did, as the journal shows it.

    `fields` become journald fields (`PVE_BALANCER_VMID=…`); `error` is set
    only for an exception the cycle did not expect (a bug or an unforeseen
    condition), so the daemon logs it once with its traceback."""

    sentence: str
    level: int = logging.INFO
    fields: Mapping[str, object] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass(frozen=True)
class Plan:
    """What `plan` shows: the decision and the inputs it was taken on."""

    decision: Decision
    snapshot: Snapshot
    estimates: Estimates
    config: Config
    unmovable: Mapping[int, str]
    requests: int


def _without_facts(snapshot: Snapshot) -> str:
    """Why no decision is taken on a snapshot with facts not read fresh:
    the failed ones by name and cause, and only those (so the wording stays
    the same while the others are read, and the journal tells it once),
    else those still to be read."""
    if snapshot.unreadable:
        return f"not deciding without {'; '.join(snapshot.unreadable)}"
    return f"waiting for facts to be read: {'; '.join(snapshot.missing)}"


class Agent:
    """The balancer's loop body. See the module docstring for its rules."""

    def __init__(self, env: Environment, config: ConfigSource) -> None:
        self.env = env
        self.config_source = config
        self.estimator = CpuEstimator()
        self.inflight: InFlight | None = None
        self.settle_until = 0.0
        self.settle_after = ""
        self.cooldown_until: dict[int, float] = {}
        self.last_moved: dict[int, float] = {}  # vmid -> time of our migrate POST
        self.came_from: dict[int, dict[str, float]] = {}  # vmid -> {node it left: when}
        self.unmovable_until: dict[int, tuple[float, str]] = {}
        self._preconditions: dict[int, tuple[float, Preconditions]] = {}
        self._leading = False
        self._rng_seed: int | None = None
        self._rng = random.Random()
        self._guest_since: dict[int, float] = {}
        self._guest_seeded: set[int] = set()
        self.pressure_since: dict[str, float] = {}
        self._placement: dict[int, tuple[str, bool]] = {}  # vmid -> (node, locked migrate)
        self._ha_waiting: str | None = None  # vmid of an HA request not carried out yet
        self.breaker = Breaker()

    # ------------------------------------------------------------ plumbing

    def reload(self) -> bool:
        """Re-read the configuration now (SIGHUP); an operator acted, so the
        circuit breaker is reset."""
        changed = self.config_source.refresh(force=True)
        self._reset_breaker("SIGHUP")
        return changed

    def _reset_breaker(self, why: str) -> None:
        said = self.breaker.reset(self.env.now(), why)
        if said:
            log.info("%s", said)

    def role(self) -> str:
        return self.env.election.describe()

    def release(self) -> None:
        """Orderly stop: say in status.json that nobody leads (only while
        the lock is still ours, so a successor's status is never
        overwritten), then give leadership up so a standby takes over at
        once."""
        if self._leading and self.env.election.is_leader:
            self.env.publish_release(self.env.now())
        self.env.election.release()

    def _rng_for(self, config: Config) -> random.Random:
        if config.seed != self._rng_seed:
            self._rng_seed = config.seed
            self._rng = random.Random(config.seed)
        return self._rng

    def _policy_state(self, now: float) -> PolicyState:
        cooldown = {v: t for v, t in self.cooldown_until.items() if t > now}
        self.cooldown_until = cooldown
        unmovable = frozenset(v for v, (t, _) in self.unmovable_until.items() if t > now)
        self.last_moved = {v: t for v, t in self.last_moved.items() if now - t < PROACTIVE_REST}
        self.came_from = {v: kept for v, left in self.came_from.items()
                          if (kept := {n: t for n, t in left.items()
                                       if now - t < RETURN_MEMORY})}
        warming = frozenset(v for v, since in self._guest_since.items()
                            if v not in self._guest_seeded and now - since < GUEST_WARMUP)
        return PolicyState(cooldown_until=dict(cooldown), unmovable=unmovable,
                           last_moved=dict(self.last_moved), settle_until=self.settle_until,
                           settle_after=self.settle_after, warming=warming,
                           pressure_since=dict(self.pressure_since),
                           came_from={v: dict(left) for v, left in self.came_from.items()})

    # ------------------------------------------------------------ the cycle

    def run_cycle(self) -> CycleResult:
        """One cycle. Never raises."""
        now = self.env.now()
        prefix = ""
        try:
            self.env.begin_cycle()
            if self.config_source.refresh():
                self._reset_breaker("balancer.yaml changed")
            change = self.env.election.tick(now)
            prefix = f"{change}; " if change else ""
            result = self._cycle(now, prefix)
        except PveError as exc:
            result = CycleResult(f"{prefix}{exc.sentence}", logging.WARNING,
                                 {"problem": exc.kind})
        except BudgetSpentError as exc:
            result = CycleResult(f"{prefix}{exc.sentence}", logging.WARNING,
                                 {"request": exc.request, "result": "deadline"})
        except Exception as exc:  # the loop must survive anything
            result = CycleResult(f"{prefix}cycle failed: {type(exc).__name__}: {exc}",
                                 logging.ERROR, error=exc)
        role = "leader" if self._leading else "standby"
        news = {"election": prefix.removesuffix("; ")} if prefix else {}
        return replace(result, fields={"role": role, **news, **result.fields})

    def _cycle(self, now: float, prefix: str) -> CycleResult:
        election = self.env.election
        if not election.is_leader:
            if self._leading:
                self._end_term()
            return CycleResult(f"{prefix}{election.describe()}")
        if not self._leading:
            self._start_term(now)
        config = self.config_source.config
        if config is None:
            return CycleResult(f"{prefix}passive: no valid configuration in "
                               f"{self.config_source.path}", logging.WARNING)
        outcome = self._lead(now, config)
        result = replace(outcome, sentence=prefix + outcome.sentence)
        self.env.publish_cycle(now, result.sentence)
        return result

    def _start_term(self, now: float) -> None:
        self._leading = True
        self.estimator = CpuEstimator()
        self.inflight = None
        self.settle_until = 0.0
        self._guest_since = {}
        self._guest_seeded = set()
        self.pressure_since = {}
        self._placement = {}
        self.env.begin_term(now)

    def _end_term(self) -> None:
        """Stepped down: forget what only a leader may act on. Cooldowns and
        the unmovable list are kept (they stay true)."""
        self._leading = False
        self.inflight = None

    def _sample(self, now: float, slow: int | None) -> tuple[Snapshot, tuple[Task, ...]]:
        snapshot, tasks = self.env.sample(now, slow)
        self.estimator.observe(snapshot)
        self._track_guests(snapshot, now)
        for name in self.estimator.nodes_needing_seed():
            try:
                points = self.env.node_cpu_history(name, now)
            except PveError as exc:
                log.info("no RRD history for node %s (%s); waiting a minute of samples",
                         name, exc)
                points = []
            self.estimator.seed_node(name, points)
        return snapshot, tasks

    def _lead(self, now: float, config: Config) -> CycleResult:
        snapshot, tasks = self._sample(now, SLOW_PER_CYCLE)
        self.pressure_since = track_memory_pressure(self.pressure_since, snapshot, config)
        self._publish_nodes(snapshot, config)
        self._learn_from_tasks(snapshot, tasks, config, now)
        if self.inflight is not None:
            return self._follow(snapshot, tasks, config, now)
        return self._decide_and_act(snapshot, config, now)

    # ------------------------------------------------------------ what others did

    def _learn_from_tasks(self, snapshot: Snapshot, tasks: tuple[Task, ...], config: Config,
                          now: float) -> None:
        """Every migration in the cluster counts, not only the one this term
        follows: one that ended (task list, or a guest seen on another node
        or out of its migrate lock since the last cycle) starts the settle
        pause, a guest moved within `vm_cooldown` by anyone is in cooldown,
        and the node a migration task ran on (the node the guest left) joins
        the guest's `came_from` for `RETURN_MEMORY`. This is what a restarted
        or newly elected leader knows before its first decision, so a guest
        the last term moved, or an operator took off a node, is not sent
        back at once."""
        self._settle_after_ended(tasks, now)
        self._ha_waiting = self._ha_pending(tasks, now)
        placement = {g.vmid: (g.node, g.lock == "migrate") for g in snapshot.guests}
        moved = [v for v, (node, locked) in placement.items() if v in self._placement and (
            self._placement[v][0] != node or (self._placement[v][1] and not locked))]
        self._placement = placement
        if moved:
            self.settle_until = max(self.settle_until, now + STATS_SETTLE)
            self.settle_after = f"the migration of vm {moved[0]}"
        for t in tasks:
            if t.kind not in MIGRATION_TASK_TYPES or not t.vmid.isdigit():
                continue
            vmid = int(t.vmid)
            if now - t.starttime < config.vm_cooldown:
                until = min(t.starttime, now) + config.vm_cooldown
                if self.cooldown_until.get(vmid, 0.0) < until:
                    self.cooldown_until[vmid] = until
            if now - t.starttime < RETURN_MEMORY and (t.running or t.exitstatus == "OK"):
                left = self.came_from.setdefault(vmid, {})
                left[t.node] = max(left.get(t.node, t.starttime), min(t.starttime, now))

    def _ha_pending(self, tasks: tuple[Task, ...], now: float) -> str | None:
        """An HA migration requested (by anyone) whose real move has not
        started yet: a migration in progress for every purpose."""
        for t in tasks:
            if t.kind != "hamigrate" or t.running or t.exitstatus != "OK" or \
                    now - t.starttime > HA_PENDING:
                continue
            if not any(o.kind == "qmigrate" and o.vmid == t.vmid and o.starttime >= t.starttime
                       for o in tasks):
                return t.vmid
        return None

    # ------------------------------------------------------------ deciding

    def _seed_candidates(self, snapshot: Snapshot, source: str, now: float) -> bool:
        """Warm the EMAs of running VMs on `source` from RRD (once each).
        Returns whether anything was asked (then the decision is re-taken)."""
        vmids = [g.vmid for g in snapshot.guests
                 if g.node == source and g.kind == "qemu" and g.status == "running"]
        needed = self.estimator.guests_needing_seed(vmids)
        for vmid in needed:
            try:
                points = self.env.guest_cpu_history(source, vmid, now)
            except PveError as exc:
                log.debug("no RRD history for vm %s: %s", vmid, exc)
                points = []
            if self.estimator.seed_guest(vmid, points):
                self._guest_seeded.add(vmid)
        return bool(needed)

    def _track_guests(self, snapshot: Snapshot, now: float) -> None:
        """Remember since when each running guest has been sampled without
        a gap (a guest EMA is trusted after a minute of samples or a seed)."""
        running = {g.vmid for g in snapshot.guests if g.status == "running"}
        self._guest_since = {v: self._guest_since.get(v, now) for v in running}
        self._guest_seeded &= running

    def evaluate(self, snapshot: Snapshot, config: Config, now: float) -> Decision:
        """The decision after checking the chosen guest's migrate
        preconditions; unmovable guests are learnt and the decision re-taken
        (bounded). Makes no change to the cluster."""
        if snapshot.missing:
            held = _without_facts(snapshot)
            return Decision(reason=held, sentence=f"no action: {held}")
        if self._ha_waiting is not None:
            pending = (f"waiting: HA migration of vm {self._ha_waiting} requested, the HA "
                       "manager has not started it yet")
            return Decision(reason=pending, sentence=f"no action: {pending}")
        decision = Decision(reason="no decision")
        seeded: set[str] = set()
        for _ in range(MAX_REDECIDE):
            decision = decide(snapshot, self.estimator.estimates(), config,
                              self._policy_state(now), self._rng_for(config))
            source = decision.history_source
            if source is not None and source not in seeded:
                seeded.add(source)
                if self._seed_candidates(snapshot, source, now):
                    continue
            m = decision.migration
            if m is None:
                return decision
            guest = next((g for g in snapshot.guests if g.vmid == m.vmid), None)
            if guest is not None and not guest.tags_known:
                # Its entry had no `tags` field: the exclusion tag may just
                # be missing from the answer. Its config says.
                try:
                    tags = self.env.guest_tags(m.source, m.vmid)
                except PveError as exc:
                    held = (f"not moving vm {m.vmid}: /cluster/resources gave no tags for "
                            f"it and its config could not be read ({exc})")
                    return Decision(reason=held, mode=decision.mode,
                                    thresholds=decision.thresholds,
                                    sentence=f"no action: {held}")
                snapshot = replace(snapshot, guests=tuple(
                    replace(g, tags=tags, tags_known=True) if g.vmid == m.vmid else g
                    for g in snapshot.guests))
                if tags:
                    continue
            pre = self._check_preconditions(m, now)
            why = pre.unmovable
            if why is not None:
                log.info("vm %s (%s) cannot migrate live: %s; not a candidate for %.0f s",
                         m.vmid, m.name, why, UNMOVABLE_TTL)
                self.unmovable_until[m.vmid] = (now + UNMOVABLE_TTL, why)
                continue
            if pre.blocks_target(m.target):
                log.info("PVE does not allow vm %s on %s; leaving it for %.0f s",
                         m.vmid, m.target, TARGET_BLOCK_TTL)
                self.unmovable_until[m.vmid] = (now + TARGET_BLOCK_TTL,
                                                f"not allowed on {m.target}")
                continue
            return decision
        return gave_up(decision, MAX_REDECIDE)

    def _check_preconditions(self, m: Migration, now: float) -> Preconditions:
        cached = self._preconditions.get(m.vmid)
        if cached is not None and now - cached[0] < PRECONDITIONS_TTL:
            return cached[1]
        pre = self.env.preconditions(m.source, m.vmid, m.target)
        self._preconditions[m.vmid] = (now, pre)
        return pre

    def _decide_and_act(self, snapshot: Snapshot, config: Config, now: float) -> CycleResult:
        decision = self.evaluate(snapshot, config, now)
        m = decision.migration
        fields: dict[str, object] = {}
        if decision.mode is not None:
            fields["mode"] = decision.mode.value
        if m is None:
            # A failed read is a problem; facts not asked yet (a term just
            # began, the API was down) are not.
            level = logging.WARNING if snapshot.unreadable else logging.INFO
            if snapshot.missing and not snapshot.unreadable:
                fields["result"] = "reading"
            return CycleResult(decision.sentence, level, fields=fields)
        fields.update(vmid=m.vmid, source=m.source, target=m.target)
        if not config.enabled:
            self._record(now, m, "observe-only", decision.reason)
            return CycleResult(f"observe only (enabled: false), not started: {decision.reason}",
                               fields={**fields, "result": "observe-only"})
        if config.dry_run:
            self._record(now, m, "dry-run", decision.reason)
            return CycleResult(f"dry run, not started: {decision.reason}",
                               fields={**fields, "result": "dry-run"})
        self.breaker.configure(config.breaker_failures, config.breaker_window)
        closed = self.breaker.close_if_due(now)
        if closed:
            log.info("%s", closed)
        if self.breaker.is_open(now):
            self._record(now, m, "breaker-open", decision.reason)
            # Worded without the guest's name or the figures of the reason
            # (those are in status.json): while it is open the chosen guest
            # may alternate, and the journal tells an unchanged wording once.
            return CycleResult(f"{self.breaker.describe(now)}, not started: the move of vm "
                               f"{m.vmid} off {m.source}",
                               fields={**fields, "result": "breaker-open"})
        try:
            upid = self.env.migrate(m.source, m.vmid, m.target)
        except FencedError as exc:
            return CycleResult(f"not migrating vm {m.vmid}: {exc}",
                               logging.WARNING, {**fields, "result": "not-leader"})
        except PveError as exc:
            self.cooldown_until[m.vmid] = now + config.vm_cooldown
            self.last_moved[m.vmid] = now
            if exc.status is None:
                # No HTTP answer (timeout, reset): PVE may have started it.
                # Follow the guest until that is known either way.
                self.came_from.setdefault(m.vmid, {})[m.source] = now
                self.inflight = InFlight(vmid=m.vmid, name=m.name, source=m.source,
                                         target=m.target, mode=m.mode, upid="",
                                         ha=m.ha_managed, started=now, handed_over=True,
                                         unconfirmed=True)
                self._record(now, m, f"unconfirmed: {exc}", decision.reason)
                return CycleResult(
                    f"migration of vm {m.vmid} ({m.name}) {m.source} → {m.target}: no "
                    f"answer ({exc}); checking whether it started",
                    logging.WARNING, {**fields, "result": "unconfirmed"})
            self._record(now, m, f"failed to start: {exc}", decision.reason)
            tripped = self.breaker.failed(now, f"vm {m.vmid} could not start")
            return CycleResult(
                f"migration of vm {m.vmid} ({m.name}) {m.source} → {m.target} could not "
                f"start: {exc}; vm {m.vmid} in cooldown for {config.vm_cooldown:.0f} s"
                + (f"; {tripped}" if tripped else ""),
                logging.WARNING, {**fields, "result": "failed"})
        # In cooldown from the start, so it stays out even if this agent stops
        # following it (leadership lost); renewed when the move ends.
        self.cooldown_until[m.vmid] = now + config.vm_cooldown
        self.last_moved[m.vmid] = now
        self.came_from.setdefault(m.vmid, {})[m.source] = now
        self.inflight = InFlight(vmid=m.vmid, name=m.name, source=m.source, target=m.target,
                                 mode=m.mode, upid=upid, ha=m.ha_managed, started=now)
        self._record(now, m, "started", decision.reason)
        what = "HA migration" if m.ha_managed else "task"
        return CycleResult(f"{decision.sentence}; started {what} {upid}",
                           fields={**fields, "result": "started"})

    # ------------------------------------------------------------ following

    def _follow(self, snapshot: Snapshot, tasks: tuple[Task, ...], config: Config,
                now: float) -> CycleResult:
        flight = self.inflight
        assert flight is not None
        fields: dict[str, object] = {"vmid": flight.vmid, "source": flight.source,
                                     "target": flight.target, "mode": flight.mode.value}
        if flight.unconfirmed:
            self._find_lost_task(flight, tasks)
        task: Task | None = None
        error: str | None = None
        upid = flight.watch_upid
        if upid is not None:
            try:
                task = self.env.task_status(upid)
            except PveError as exc:
                error = str(exc)
        progress = executor.step(flight, task, error, snapshot, tasks, now)
        if not progress.done:
            return CycleResult(progress.sentence, fields={**fields, "result": "running"})
        self.inflight = None
        self.cooldown_until[flight.vmid] = now + config.vm_cooldown
        self.settle_until = now + STATS_SETTLE
        self.settle_after = f"the migration of vm {flight.vmid}"
        self._preconditions.pop(flight.vmid, None)
        self._record_flight(now, flight, "ok" if progress.ok else f"failed: {progress.exitstatus}")
        fields["result"] = "ok" if progress.ok else "failed"
        if progress.ok:
            source = snapshot.node(flight.source)
            target = snapshot.node(flight.target)
            if source is not None and target is not None:
                self.estimator.apply_migration(flight.vmid, flight.source, flight.target,
                                               float(source.maxcpu), float(target.maxcpu))
            return CycleResult(progress.sentence, fields=fields)
        tripped = self.breaker.failed(now, f"vm {flight.vmid} {progress.exitstatus}")
        return CycleResult(f"{progress.sentence}; vm {flight.vmid} in cooldown for "
                           f"{config.vm_cooldown:.0f} s" + (f"; {tripped}" if tripped else ""),
                           logging.WARNING, fields)

    @staticmethod
    def _find_lost_task(flight: InFlight, tasks: tuple[Task, ...]) -> None:
        """The POST's answer was lost: a migration task of the guest started
        since shortly before it is ours (running or already finished), and
        is followed by its UPID from now on."""
        kinds = ("hamigrate", "qmigrate") if flight.ha else ("qmigrate",)
        mine = sorted((t for t in tasks if t.kind in kinds and t.vmid == str(flight.vmid)
                       and t.starttime >= flight.started - LOST_ANSWER_LOOKBACK),
                      key=lambda t: (t.kind != kinds[0], t.starttime))
        if mine:
            flight.upid = mine[0].upid
            flight.unconfirmed = False
            flight.handed_over = False

    # ------------------------------------------------------------ reporting

    def _record(self, now: float, m: Migration, result: str, reason: str) -> None:
        self.env.record_decision(DecisionRecord(
            time=now, mode=m.mode.value, vmid=m.vmid, name=m.name, source=m.source,
            target=m.target, result=result, reason=reason))

    def _record_flight(self, now: float, f: InFlight, result: str) -> None:
        self.env.record_decision(DecisionRecord(
            time=now, mode=f.mode.value, vmid=f.vmid, name=f.name, source=f.source,
            target=f.target, result=result, reason=f"finished after {now - f.started:.0f} s"))

    def _publish_nodes(self, snapshot: Snapshot, config: Config) -> None:
        estimates = self.estimator.estimates()
        nodes = [NodeRecord(name=n.name, online=n.online, cpu_ema=estimates.node_cpu.get(n.name),
                            cpu=n.cpu, mem=n.mem, maxmem=n.maxmem, maintenance=n.maintenance)
                 for n in snapshot.nodes]
        self.env.publish_nodes(nodes, {"cpu_max": config.cpu_max,
                                       "memory_max": config.memory_max})

    # ------------------------------------------------------------ plan

    def _settle_after_ended(self, tasks: tuple[Task, ...], now: float) -> None:
        """The settle pause after every migration task that ended, from its
        `endtime` (the API's clock; one in the future counts from now)."""
        ended = [t for t in tasks if t.kind in MIGRATION_TASK_TYPES and not t.running
                 and t.endtime is not None and abs(now - t.endtime) < STATS_SETTLE]
        if ended:
            last = max(ended, key=lambda t: t.endtime or 0.0)
            assert last.endtime is not None
            until = min(last.endtime, now) + STATS_SETTLE
            if until > self.settle_until:
                self.settle_until = until
                self.settle_after = f"the migration of vm {last.vmid}"

    def plan(self) -> Plan:
        """Sample once (warming EMAs from RRD), decide, act not at all; a
        migration that ended within the settle pause holds the decision
        back as it would hold the agent's."""
        config = self.config_source.config
        if config is None:
            raise ValueError(f"no valid configuration in {self.config_source.path}")
        now = self.env.now()
        snapshot, tasks = self._sample(now, slow=None)  # one sample: every fact now
        self._learn_from_tasks(snapshot, tasks, config, now)
        decision = self.evaluate(snapshot, config, now)
        return Plan(decision=decision, snapshot=snapshot,
                    estimates=self.estimator.estimates(), config=config,
                    unmovable={v: why for v, (_, why) in self.unmovable_until.items()},
                    requests=self.env.api_requests)
