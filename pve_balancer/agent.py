"""One balancer cycle: election → sample → smooth → follow or decide → act.

`Agent.run_cycle()` is the whole behaviour of the daemon in one call. It
returns one sentence (the journal line, and what the scenario tests assert
on) and never raises. Time comes from a `Clock`, so the same agent runs on a
node in real time and in the simulator's virtual time.

Rules this module enforces around the pure policy:
- Only the leader touches the API; a standby cycle is the election only.
- One migration at a time, followed to its real end (see `executor`), then a
  pause until PVE's node statistics have caught up, with the EMAs shifted by
  the moved guest, so no decision is taken on pre-migration data.
- Moved and failed guests go into cooldown; nothing is retried in a loop.
- Guests that cannot move live (local disks or resources) are learnt from
  PVE's migrate preconditions before the first attempt and remembered.
- Leadership is re-confirmed immediately before every POST.
- The configuration is re-read when the file changes (or on demand, e.g.
  SIGHUP); a broken file keeps the last good configuration.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import executor
from .config import Config, load_config
from .ema import CpuEstimator
from .executor import InFlight
from .leadership import Election
from .model import Decision, Estimates, Migration, Mode, Snapshot
from .policy import PROACTIVE_REST, PolicyState, decide
from .pve import Preconditions, PveClient, PveError, Task
from .status import DecisionRecord, NodeRecord, StatusWriter, decisions_from, read_status

log = logging.getLogger(__name__)

STATS_SETTLE = 20.0
"""Seconds without decisions after a migration ends: PVE refreshes node
statistics about every 10 s, two refreshes make sure memory figures show
the guest where it now is."""

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


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time (unix seconds, comparable with PVE's timestamps)."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ConfigSource:
    """The configuration file, re-read when its stat signature changes.

    `config` is the configuration in force: the last one that loaded
    without fatal problems, or None if none ever did (the agent is then
    passive). Each problem is logged once per change of the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: Config | None = None
        self._signature: tuple[int, int, int] | None | str = "unread"

    @classmethod
    def fixed(cls, config: Config) -> ConfigSource:
        """A source that never reads a file (tests, `plan --config` checks)."""
        src = cls(Path(os.devnull))
        src.config = config
        src._signature = "fixed"
        return src

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, force: bool = False) -> bool:
        """Re-read if the file changed (or `force`). Returns True when the
        configuration in force changed."""
        if self._signature == "fixed":
            return False
        signature = self._stat()
        if not force and signature == self._signature:
            return False
        self._signature = signature
        result = load_config(self.path)
        for problem in result.problems:
            (log.error if problem.fatal else log.warning)("%s", problem)
        if result.config is None:
            if self.config is None:
                log.error("configuration %s rejected; staying passive until it is fixed",
                          self.path)
            else:
                log.error("configuration %s rejected; keeping the previous configuration",
                          self.path)
            return False
        if result.config == self.config:
            return False
        first = self.config is None
        self.config = result.config
        log.info("configuration %s %s: %s", self.path, "loaded" if first else "reloaded",
                 _config_summary(result.config))
        return True


def _config_summary(config: Config) -> str:
    flags = []
    if not config.enabled:
        flags.append("disabled (observe only)")
    if config.dry_run:
        flags.append("dry run")
    head = f"cpu_max {config.cpu_max:.2f}, memory_max {config.memory_max:.2f}, " \
           f"interval {config.interval:g} s"
    return ", ".join([head, *flags])


@dataclass(frozen=True)
class Plan:
    """What `plan` shows: the decision and the inputs it was taken on."""

    decision: Decision
    snapshot: Snapshot
    estimates: Estimates
    config: Config
    unmovable: Mapping[int, str]
    requests: int


class Agent:
    """The balancer's loop body. See the module docstring for its rules."""

    def __init__(
        self,
        *,
        node: str,
        client: PveClient | Callable[[], PveClient],
        election: Election,
        config: ConfigSource,
        clock: Clock,
        status: StatusWriter | None = None,
    ) -> None:
        self.node = node
        self._client_factory = client if callable(client) and not isinstance(
            client, PveClient) else None
        self._client: PveClient | None = client if isinstance(client, PveClient) else None
        self.election = election
        self.config_source = config
        self.clock = clock
        self.status = status
        self.estimator = CpuEstimator()
        self.inflight: InFlight | None = None
        self.settle_until = 0.0
        self.settle_reason = ""
        self.cooldown_until: dict[int, float] = {}
        self.last_moved: dict[int, float] = {}  # vmid -> time of our migrate POST
        self.unmovable_until: dict[int, tuple[float, str]] = {}
        self._preconditions: dict[int, tuple[float, Preconditions]] = {}
        self._leading = False
        self._rng_seed: int | None = None
        self._rng = random.Random()
        self.last_sentence = ""
        self.last_fields: dict[str, object] = {}
        self.last_level = logging.INFO
        self.last_decision: Decision | None = None
        self._prefix = ""
        self._guest_since: dict[int, float] = {}
        self._guest_seeded: set[int] = set()

    # ------------------------------------------------------------ plumbing

    @property
    def client(self) -> PveClient:
        if self._client is None:
            if self._client_factory is None:  # pragma: no cover - constructor guarantees one
                raise PveError("no API client")
            self._client = self._client_factory()
        return self._client

    def reload(self) -> bool:
        """Re-read the configuration now (SIGHUP)."""
        return self.config_source.refresh(force=True)

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
        return PolicyState(cooldown_until=dict(cooldown), unmovable=unmovable,
                           last_moved=dict(self.last_moved))

    def role(self) -> str:
        return self.election.describe()

    # ------------------------------------------------------------ the cycle

    def run_cycle(self) -> str:
        """One cycle; returns its sentence. Never raises."""
        now = self.clock.now()
        self.last_fields = {}
        self.last_level = logging.INFO
        self._prefix = ""
        try:
            sentence = self._cycle(now)
        except PveError as exc:
            log.debug("cycle failed", exc_info=True)
            self.last_level = logging.WARNING
            sentence = f"{self._prefix}cannot reach the PVE API: {exc}"
        except Exception as exc:  # the loop must survive anything
            log.debug("cycle failed", exc_info=True)
            self.last_level = logging.ERROR
            sentence = f"{self._prefix}cycle failed: {type(exc).__name__}: {exc}"
        self.last_fields.setdefault("role", "leader" if self._leading else "standby")
        self.last_sentence = sentence
        return sentence

    def _cycle(self, now: float) -> str:
        self.config_source.refresh()
        change = self.election.tick(now)
        prefix = self._prefix = f"{change}; " if change else ""
        if not self.election.is_leader:
            if self._leading:
                self._end_term()
            return f"{prefix}{self.election.describe()}"
        if not self._leading:
            self._start_term(now)
        config = self.config_source.config
        if config is None:
            self.last_level = logging.WARNING
            return f"{prefix}passive: no valid configuration in {self.config_source.path}"
        sentence = prefix + self._lead(now, config)
        if self.status is not None:
            self.status.note(sentence)
            self.status.maybe_write(now)
        return sentence

    def _start_term(self, now: float) -> None:
        self._leading = True
        self.estimator = CpuEstimator()
        self.inflight = None
        self.settle_until = 0.0
        self._guest_since = {}
        self._guest_seeded = set()
        if self._client is not None:
            self._client.invalidate_slow()
        if self.status is not None:
            previous = read_status(self.status.path)
            if previous is not None and not self.status.writes:
                self.status.seed_decisions(decisions_from(previous))
            self.status.became_leader(now)

    def _end_term(self) -> None:
        """Stepped down: forget what only a leader may act on. Cooldowns and
        the unmovable list are kept (they stay true)."""
        self._leading = False
        self.inflight = None

    def _sample(self, now: float) -> tuple[PveClient, Snapshot, tuple[Task, ...], Estimates]:
        client = self.client
        snapshot, tasks = client.sample(now)
        self.estimator.observe(snapshot)
        self._track_guests(snapshot, now)
        for name in self.estimator.nodes_needing_seed():
            try:
                points = client.node_cpu_history(name, now)
            except PveError as exc:
                log.info("no RRD history for node %s (%s); waiting a minute of samples",
                         name, exc)
                points = []
            self.estimator.seed_node(name, points)
        return client, snapshot, tasks, self.estimator.estimates()

    def _lead(self, now: float, config: Config) -> str:
        client, snapshot, tasks, estimates = self._sample(now)
        self._publish(snapshot, estimates, config)
        if self.inflight is not None:
            return self._follow(client, snapshot, tasks, config, now)
        if now < self.settle_until:
            return (f"waiting {self.settle_until - now:.0f} s for node statistics to refresh "
                    f"after {self.settle_reason}")
        return self._decide_and_act(client, snapshot, estimates, config, now)

    # ------------------------------------------------------------ deciding

    def _seed_candidates(self, client: PveClient, snapshot: Snapshot, source: str,
                         now: float) -> bool:
        """Warm the EMAs of running VMs on `source` from RRD (once each).
        Returns whether anything was asked (then the decision is re-taken)."""
        vmids = [g.vmid for g in snapshot.guests
                 if g.node == source and g.kind == "qemu" and g.status == "running"]
        needed = self.estimator.guests_needing_seed(vmids)
        for vmid in needed:
            try:
                points = client.guest_cpu_history(source, vmid, now)
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

    def _cold_guests(self, snapshot: Snapshot, source: str, now: float) -> tuple[int, int]:
        """(cold, total) running VMs on `source` whose CPU EMA is neither
        seeded from RRD nor backed by a minute of samples."""
        vms = [g.vmid for g in snapshot.guests
               if g.node == source and g.kind == "qemu" and g.status == "running"]
        cold = [v for v in vms if v not in self._guest_seeded
                and now - self._guest_since.get(v, now) < GUEST_WARMUP]
        return len(cold), len(vms)

    def evaluate(self, client: PveClient, snapshot: Snapshot, config: Config,
                 now: float) -> Decision:
        """The decision after checking the chosen guest's migrate
        preconditions; unmovable guests are learnt and the decision re-taken
        (bounded). Makes no change to the cluster."""
        decision = Decision(reason="no decision")
        seeded: set[str] = set()
        for _ in range(MAX_REDECIDE):
            estimates = self.estimator.estimates()
            decision = decide(snapshot, estimates, config, self._policy_state(now),
                              self._rng_for(config))
            m = decision.migration
            if m is None:
                return decision
            if m.mode is Mode.CPU and m.source not in seeded:
                # Only CPU decisions rest on guest EMAs (busiest kept, share moved).
                seeded.add(m.source)
                if self._seed_candidates(client, snapshot, m.source, now):
                    continue
            if m.mode is Mode.CPU:
                cold, total = self._cold_guests(snapshot, m.source, now)
                if cold:
                    return Decision(
                        reason=f"no action: {m.source} above cpu_max but the CPU history of "
                        f"{cold} of {total} VMs there is still warming up (no RRD data)",
                        mode=m.mode, thresholds=decision.thresholds)
            pre = self._check_preconditions(client, m, now)
            if pre is None:
                return decision
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
        return Decision(reason=f"no action: gave up after {MAX_REDECIDE} candidates turned out "
                        f"unmovable ({decision.reason})", mode=decision.mode,
                        thresholds=decision.thresholds)

    def _check_preconditions(self, client: PveClient, m: Migration,
                             now: float) -> Preconditions | None:
        cached = self._preconditions.get(m.vmid)
        if cached is not None and now - cached[0] < PRECONDITIONS_TTL:
            return cached[1]
        pre = client.preconditions(m.source, m.vmid, m.target)
        self._preconditions[m.vmid] = (now, pre)
        return pre

    def _decide_and_act(self, client: PveClient, snapshot: Snapshot, estimates: Estimates,
                        config: Config, now: float) -> str:
        decision = self.evaluate(client, snapshot, config, now)
        self.last_decision = decision
        m = decision.migration
        if decision.mode is not None:
            self.last_fields["mode"] = decision.mode.value
        if m is None:
            return decision.reason if decision.reason.startswith("no action") else \
                f"no action: {decision.reason}"
        self.last_fields.update(vmid=m.vmid, source=m.source, target=m.target)
        if not config.enabled:
            self._record(now, m, "observe-only", decision.reason)
            self.last_fields["result"] = "observe-only"
            return f"observe only (enabled: false), not started: {decision.reason}"
        if config.dry_run:
            self._record(now, m, "dry-run", decision.reason)
            self.last_fields["result"] = "dry-run"
            return f"dry run, not started: {decision.reason}"
        if not self.election.confirm(self.clock.now()):
            self.last_level = logging.WARNING
            self.last_fields["result"] = "not-leader"
            return f"not migrating vm {m.vmid}: leadership could not be confirmed"
        try:
            upid = client.migrate(m.source, m.vmid, m.target)
        except PveError as exc:
            self.cooldown_until[m.vmid] = now + config.vm_cooldown
            self.last_moved[m.vmid] = now
            if exc.status is None:
                # No HTTP answer (timeout, reset): PVE may have started it.
                # Follow the guest until that is known either way.
                self.inflight = InFlight(vmid=m.vmid, name=m.name, source=m.source,
                                         target=m.target, mode=m.mode, upid="",
                                         ha=m.ha_managed, started=now, handed_over=True,
                                         unconfirmed=True)
                self._record(now, m, f"unconfirmed: {exc}", decision.reason)
                self.last_level = logging.WARNING
                self.last_fields["result"] = "unconfirmed"
                return (f"migration of vm {m.vmid} ({m.name}) {m.source} → {m.target}: no "
                        f"answer ({exc}); checking whether it started")
            self._record(now, m, f"failed to start: {exc}", decision.reason)
            self.last_level = logging.WARNING
            self.last_fields["result"] = "failed"
            return (f"migration of vm {m.vmid} ({m.name}) {m.source} → {m.target} could not "
                    f"start: {exc}; vm {m.vmid} in cooldown for {config.vm_cooldown:.0f} s")
        # In cooldown from the start, so it stays out even if this agent stops
        # following it (leadership lost); renewed when the move ends.
        self.cooldown_until[m.vmid] = now + config.vm_cooldown
        self.last_moved[m.vmid] = now
        self.inflight = InFlight(vmid=m.vmid, name=m.name, source=m.source, target=m.target,
                                 mode=m.mode, upid=upid, ha=m.ha_managed, started=now)
        self._record(now, m, "started", decision.reason)
        self.last_fields["result"] = "started"
        return f"{decision.reason}; started {'HA migration' if m.ha_managed else 'task'} {upid}"

    # ------------------------------------------------------------ following

    def _follow(self, client: PveClient, snapshot: Snapshot, tasks: tuple[Task, ...],
                config: Config, now: float) -> str:
        flight = self.inflight
        assert flight is not None
        self.last_fields.update(vmid=flight.vmid, source=flight.source, target=flight.target,
                                mode=flight.mode.value)
        task: Task | None = None
        error: str | None = None
        upid = flight.watch_upid
        if upid is not None:
            try:
                task = client.task_status(upid)
            except PveError as exc:
                error = str(exc)
        progress = executor.step(flight, task, error, snapshot, tasks, now)
        if not progress.done:
            self.last_fields["result"] = "running"
            return progress.sentence
        self.inflight = None
        self.cooldown_until[flight.vmid] = now + config.vm_cooldown
        self.settle_until = now + STATS_SETTLE
        self.settle_reason = f"the migration of vm {flight.vmid}"
        self._preconditions.pop(flight.vmid, None)
        result = "ok" if progress.ok else f"failed: {progress.exitstatus}"
        self.last_fields["result"] = "ok" if progress.ok else "failed"
        self._record_flight(now, flight, result)
        if progress.ok:
            source = snapshot.node(flight.source)
            target = snapshot.node(flight.target)
            if source is not None and target is not None:
                self.estimator.apply_migration(flight.vmid, flight.source, flight.target,
                                               float(source.maxcpu), float(target.maxcpu))
            return progress.sentence
        self.last_level = logging.WARNING
        return f"{progress.sentence}; vm {flight.vmid} in cooldown for {config.vm_cooldown:.0f} s"

    # ------------------------------------------------------------ reporting

    def _record(self, now: float, m: Migration, result: str, reason: str) -> None:
        if self.status is None:
            return
        self.status.record(DecisionRecord(time=now, mode=m.mode.value, vmid=m.vmid, name=m.name,
                                          source=m.source, target=m.target, result=result,
                                          reason=reason))

    def _record_flight(self, now: float, f: InFlight, result: str) -> None:
        if self.status is None:
            return
        self.status.record(DecisionRecord(time=now, mode=f.mode.value, vmid=f.vmid, name=f.name,
                                          source=f.source, target=f.target, result=result,
                                          reason=f"finished after {now - f.started:.0f} s"))

    def _publish(self, snapshot: Snapshot, estimates: Estimates, config: Config) -> None:
        if self.status is None:
            return
        nodes = [NodeRecord(name=n.name, online=n.online, cpu_ema=estimates.node_cpu.get(n.name),
                            cpu=n.cpu, mem=n.mem, maxmem=n.maxmem, maintenance=n.maintenance)
                 for n in snapshot.nodes]
        thresholds = {"cpu_max": config.cpu_max, "memory_max": config.memory_max}
        self.status.update(nodes, thresholds)

    # ------------------------------------------------------------ plan

    def plan(self) -> Plan:
        """Sample once (warming EMAs from RRD), decide, act not at all."""
        config = self.config_source.config
        if config is None:
            raise ValueError(f"no valid configuration in {self.config_source.path}")
        now = self.clock.now()
        client, snapshot, _tasks, _estimates = self._sample(now)
        decision = self.evaluate(client, snapshot, config, now)
        self.last_decision = decision
        return Plan(decision=decision, snapshot=snapshot,
                    estimates=self.estimator.estimates(), config=config,
                    unmovable={v: why for v, (_, why) in self.unmovable_until.items()},
                    requests=client.requests)

