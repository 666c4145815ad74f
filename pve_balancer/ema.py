"""One-minute CPU smoothing, per node and per running guest.

PVE reports CPU as a noisy instantaneous fraction; the policy must act only on
sustained load. The average is time-aware (`alpha = 1 - exp(-dt / TAU)`) so a
late or missed cycle weighs what it should instead of counting as one tick.

This module is pure state: it never reads a clock or the API. The agent feeds
it every snapshot (`observe`), warms cold EMAs from PVE's RRD samples
(`seed_node` / `seed_guest`) and tells it about completed migrations
(`apply_migration`) so no decision is taken on pre-migration figures.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .model import Estimates, Guest, Snapshot

NOMINAL_INTERVAL = 5.0
"""The cadence the smoothing is specified at (seconds)."""

WINDOW = 60.0
"""The span the EMA represents and the history readiness asks for (seconds)."""

TAU = NOMINAL_INTERVAL / math.log(13.0 / 11.0)
"""Time constant (about 29.9 s) such that `ema_alpha(5.0) == 2 / 13`: the
classic 12-sample EMA at the nominal 5 s cadence, i.e. a one-minute span."""

STALE_CORRECTION_LIMIT = 30.0
"""How long (seconds) after a migration a node's unchanged raw CPU sample is
still treated as pre-migration data. PVE refreshes node stats about every
10 s; this bounds the correction should a node's figure genuinely repeat."""

_HISTORY = 64  # raw samples kept per EMA (covers WINDOW at 1 s cadence)

_INF = math.inf
_NO_WEIGHT = 0.0
"""`ema_alpha(0.0)`: the weight of a second sample at the same instant."""
_NOTHING: dict[int, float] = {}

_Samples = tuple[float, dict[int, float], dict[int, list[float]] | None]
"""One snapshot's guest samples: its time, `vmid -> sample` (the first entry
of each guest), and the further samples of a guest listed more than once."""


def ema_alpha(dt: float, tau: float = TAU) -> float:
    """Weight of a new sample taken `dt` seconds after the previous one."""
    if not dt > 0.0 or not tau > 0.0:
        return 0.0
    return 1.0 - math.exp(-dt / tau)


def _finite(value: float) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0.0 else None


@dataclass
class _Ema:
    """One smoothed series. `since` is when continuous live sampling began;
    `seeded` means warmed from RRD; `seed_tried` records that the agent asked
    RRD (even unsuccessfully) so it is not asked again every cycle."""

    value: float
    last_time: float
    since: float
    seeded: bool = False
    seed_tried: bool = False
    live: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))

    def update(self, time: float, sample: float) -> None:
        self.value += ema_alpha(time - self.last_time) * (sample - self.value)
        self.last_time = time
        self.live.append((time, sample))
        while self.live and self.live[0][0] < time - WINDOW:
            self.live.popleft()

    def ready(self) -> bool:
        return self.seeded or self.last_time - self.since >= WINDOW

    def seed(self, samples: Sequence[tuple[float, float]]) -> bool:
        """Replace the value with an EMA over the last minute of `samples`,
        then replay the live samples newer than them. Returns whether any
        usable sample was given."""
        self.seed_tried = True
        value = _seeded(samples, self.live)
        if value is None:
            return False
        self.value = value
        self.seeded = True
        return True


def _seeded(samples: Sequence[tuple[float, float]],
            live: Iterable[tuple[float, float]]) -> float | None:
    """An EMA over the last minute of the RRD `samples`, then over the live
    samples newer than them (None when RRD gave no usable sample)."""
    prior = _smooth(samples)
    if prior is None:
        return None
    value, seed_time = prior
    previous = seed_time
    for time, sample in live:
        if time <= seed_time:
            continue
        # Clocks of RRD and of the agent may differ slightly; never let a
        # skew turn one live sample into more (or less) than a minute.
        value += ema_alpha(min(time - previous, WINDOW)) * (sample - value)
        previous = time
    return value


def _smooth(samples: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """EMA over the samples of the last WINDOW seconds (by their own times),
    skipping gaps (RRD reports NaN for unknown periods)."""
    clean: list[tuple[float, float]] = []
    for time, value in samples:
        t, v = _finite_time(time), _finite(value)
        if t is not None and v is not None:
            clean.append((t, v))
    if not clean:
        return None
    clean.sort()
    newest = clean[-1][0]
    window = [(t, v) for t, v in clean if t >= newest - WINDOW]
    value = window[0][1]
    previous = window[0][0]
    for t, v in window[1:]:
        value += ema_alpha(t - previous) * (v - value)
        previous = t
    return value, newest


def _finite_time(value: float) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class _StaleCorrection:
    """A node's raw CPU figure as it was when a migration completed, and the
    share the migration moved; while PVE still reports that exact figure, it
    is pre-migration data and is corrected by `delta` before smoothing."""

    raw: float
    delta: float
    until: float


class CpuEstimator:
    """CPU EMAs for every online node and every running guest.

    Guests are keyed by vmid so a guest that moves keeps its history; guests
    that stop or disappear are forgotten. An EMA that saw no sample for more
    than WINDOW seconds restarts (and asks to be re-seeded): a stale average
    is worse than an honest cold one.

    Nodes (a few dozen) keep one `_Ema` each. Guests (up to ten thousand,
    every cycle) are one table instead, updated in a single loop: every
    guest EMA that exists was updated at the previous snapshot (a guest
    missing from one is forgotten), so they all share one `alpha` and one
    restart decision per snapshot; each snapshot's samples are kept once,
    as a `vmid -> sample` dict for the last minute, instead of a deque per
    guest, and a guest's live samples are read from them only when it is
    seeded. The values are exactly those of one `_Ema` per guest
    (tests/unit/test_ema_table.py compares the two).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, _Ema] = {}
        self._online: tuple[str, ...] = ()
        self._last_time: float | None = None
        self._corrections: dict[str, _StaleCorrection] = {}
        self._raw: dict[str, float] = {}  # last raw node figure, before correction
        # guests: the EMA of each running guest, in the order first seen
        self._guest_cpu: dict[int, float] = {}
        self._guest_since: dict[int, float] = {}  # when its continuous sampling began
        self._guest_seeded: set[int] = set()
        self._guest_seed_tried: set[int] = set()
        self._guest_live: deque[_Samples] = deque(maxlen=_HISTORY)
        self._guests_seen: tuple[Guest, ...] = ()  # the last snapshot's, for their vCPUs

    # -- sampling --------------------------------------------------------

    def observe(self, snapshot: Snapshot) -> None:
        """Fold one snapshot in. Snapshots not newer than the last one are
        ignored (a repeated or out-of-order sample carries no new time)."""
        now = _finite_time(snapshot.time)
        previous = self._last_time
        if now is None or (previous is not None and now <= previous):
            return
        self._last_time = now

        online: list[str] = []
        for node in snapshot.nodes:
            sample = _finite(node.cpu)
            if not node.online or sample is None:
                self._nodes.pop(node.name, None)
                self._corrections.pop(node.name, None)
                self._raw.pop(node.name, None)
                continue
            online.append(node.name)
            self._raw[node.name] = sample
            self._update(self._nodes, node.name, now, self._corrected(node.name, now, sample))
        known = {node.name for node in snapshot.nodes}
        for name in [n for n in self._nodes if n not in known]:
            del self._nodes[name]
            self._corrections.pop(name, None)
            self._raw.pop(name, None)
        self._online = tuple(online)
        self._observe_guests(snapshot.guests, now, previous)

    def _observe_guests(self, guests: tuple[Guest, ...], now: float,
                        previous: float | None) -> None:
        """The guest half of `observe`: one pass, no call per guest on the
        usual path (an exact finite float sample of a running guest)."""
        values = self._guest_cpu
        since = self._guest_since
        if previous is None or now - previous > WINDOW:
            old: Callable[[int], float | None] = _NOTHING.get  # every EMA restarts
            self._guest_seeded.clear()
            self._guest_seed_tried.clear()
            alpha = 0.0
        else:
            old = values.get
            alpha = ema_alpha(now - previous)
        samples: dict[int, float] = {}
        repeated: dict[int, list[float]] | None = None
        for guest in guests:
            if guest.status != "running":
                continue
            sample = guest.cpu
            if type(sample) is not float or not 0.0 <= sample < _INF:  # NaN fails too
                checked = _finite(sample)
                if checked is None:
                    continue
                sample = checked
            vmid = guest.vmid
            if vmid in samples:
                # Listed twice at one instant: the second sample weighs
                # nothing (no time passed) but counts as a live sample.
                value = values[vmid]
                values[vmid] = value + _NO_WEIGHT * (sample - value)
                if repeated is None:
                    repeated = {}
                repeated.setdefault(vmid, []).append(sample)
                continue
            samples[vmid] = sample
            before = old(vmid)
            if before is None:
                values[vmid] = sample
                since[vmid] = now
            else:
                values[vmid] = before + alpha * (sample - before)
        if len(values) != len(samples):  # some stopped or disappeared
            for vmid in values.keys() - samples.keys():
                del values[vmid]
                del since[vmid]
                self._guest_seeded.discard(vmid)
                self._guest_seed_tried.discard(vmid)
        live = self._guest_live
        live.append((now, samples, repeated))
        while live[0][0] < now - WINDOW:
            live.popleft()
        self._guests_seen = guests

    @staticmethod
    def _update(table: dict[str, _Ema], key: str, now: float, sample: float) -> None:
        ema = table.get(key)
        if ema is None or now - ema.last_time > WINDOW:
            ema = _Ema(value=sample, last_time=now, since=now)
            ema.live.append((now, sample))
            table[key] = ema
            return
        ema.update(now, sample)

    def _corrected(self, name: str, now: float, sample: float) -> float:
        fix = self._corrections.get(name)
        if fix is None:
            return sample
        if sample != fix.raw or now > fix.until:
            del self._corrections[name]
            return sample
        return max(0.0, sample + fix.delta)

    def _guest_ready(self, vmid: int) -> bool:
        return vmid in self._guest_seeded or (
            self._last_time is not None and self._last_time - self._guest_since[vmid] >= WINDOW)

    def _guest_samples(self, vmid: int) -> list[tuple[float, float]]:
        """A guest's live samples since its sampling began, at most the last
        `_HISTORY` of the last minute (what a per-guest deque would hold)."""
        start = self._guest_since[vmid]
        out: list[tuple[float, float]] = []
        for time, samples, repeated in self._guest_live:
            if time < start:
                continue
            out.append((time, samples[vmid]))
            if repeated is not None and vmid in repeated:
                out.extend((time, sample) for sample in repeated[vmid])
        return out[-_HISTORY:]

    def _guest_vcpus(self, vmid: int) -> float:
        """The guest's vCPUs as its last sampled entry gave them."""
        for guest in reversed(self._guests_seen):
            if (guest.vmid == vmid and guest.status == "running"
                    and _finite(guest.cpu) is not None):
                return float(guest.maxcpu)
        return 0.0

    # -- warming from RRD ------------------------------------------------

    def nodes_needing_seed(self) -> list[str]:
        """Online nodes whose EMA is not ready and RRD was not yet asked."""
        return sorted(
            name
            for name in self._online
            if (ema := self._nodes.get(name)) is not None
            and not ema.ready()
            and not ema.seed_tried
        )

    def guests_needing_seed(self, vmids: Iterable[int] | None = None) -> list[int]:
        """Running guests (optionally among `vmids`, e.g. the candidates of a
        decision) whose EMA is not ready and RRD was not yet asked."""
        values = self._guest_cpu
        pool = values.keys() if vmids is None else {v for v in vmids if v in values}
        return sorted(v for v in pool
                      if not self._guest_ready(v) and v not in self._guest_seed_tried)

    def seed_node(self, name: str, samples: Sequence[tuple[float, float]]) -> bool:
        """Warm a node's EMA from RRD `(time, cpu)` samples (the last minute
        of them is used). Empty or unusable samples only record the attempt.
        Returns whether the EMA is now seeded. Unknown nodes are ignored:
        seed after the first `observe`."""
        ema = self._nodes.get(name)
        return ema.seed(samples) if ema is not None else False

    def seed_guest(self, vmid: int, samples: Sequence[tuple[float, float]]) -> bool:
        """As `seed_node`, for a running guest (cpu as a fraction of its vCPUs)."""
        if vmid not in self._guest_cpu:
            return False
        self._guest_seed_tried.add(vmid)
        value = _seeded(samples, self._guest_samples(vmid))
        if value is None:
            return False
        self._guest_cpu[vmid] = value
        self._guest_seeded.add(vmid)
        return True

    # -- results ---------------------------------------------------------

    def estimates(self) -> Estimates:
        """The current EMAs. `node_cpu_ready` is true when every online node's
        EMA is seeded or backed by a full minute of samples."""
        ready = all(
            (ema := self._nodes.get(name)) is not None and ema.ready() for name in self._online
        )
        return Estimates(
            node_cpu={name: ema.value for name, ema in self._nodes.items()},
            guest_cpu=dict(self._guest_cpu),
            node_cpu_ready=ready,
        )

    def apply_migration(
        self,
        vmid: int,
        source: str,
        target: str,
        source_maxcpu: float,
        target_maxcpu: float,
    ) -> bool:
        """Account for a completed migration of `vmid` from `source` to
        `target`: move the guest's host share (`guest_ema * guest.maxcpu /
        node.maxcpu`) from the source EMA to the target EMA, and keep
        correcting each node's raw figure while PVE still reports the
        pre-migration value. Returns False (and changes nothing) when the
        guest or its CPU size is unknown."""
        value = self._guest_cpu.get(vmid)
        if value is None:
            return False
        vcpus = self._guest_vcpus(vmid)
        if not vcpus > 0.0:
            return False
        until = (self._last_time or 0.0) + STALE_CORRECTION_LIMIT
        moves = ((source, source_maxcpu, -1.0), (target, target_maxcpu, 1.0))
        for name, node_maxcpu, sign in moves:
            node = self._nodes.get(name)
            if node is None or not node_maxcpu > 0.0:
                continue
            delta = sign * value * vcpus / node_maxcpu
            node.value = min(1.0, max(0.0, node.value + delta))
            raw = self._raw.get(name, node.value)
            previous = self._corrections.get(name)
            if previous is not None and previous.raw == raw:
                delta += previous.delta
            self._corrections[name] = _StaleCorrection(raw=raw, delta=delta, until=until)
        return True
