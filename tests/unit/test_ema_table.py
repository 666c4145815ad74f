"""The guest EMAs kept as one table (`CpuEstimator`) give exactly what one
`_Ema` per guest gives: the same values bit for bit, in the same order, the
same seeding answers and the same host share after a migration, over long
random runs in which guests appear, stop, move, repeat, send unusable
samples, and snapshots come late (gaps beyond the window), twice or out of
order."""

from __future__ import annotations

import math
import random

import pytest

from pve_balancer.ema import _HISTORY, WINDOW, CpuEstimator, _Ema, _finite, _finite_time
from pve_balancer.model import Guest, Node, Snapshot

NODES = ("a", "b", "c")
CORES = 32


class PerGuest:
    """The straightforward reference: one `_Ema` (with its deque of live
    samples) per running guest, updated one at a time."""

    def __init__(self) -> None:
        self.emas: dict[int, _Ema] = {}
        self.vcpus: dict[int, float] = {}
        self.last: float | None = None

    def observe(self, snapshot: Snapshot) -> None:
        now = _finite_time(snapshot.time)
        if now is None or (self.last is not None and now <= self.last):
            return
        self.last = now
        running: set[int] = set()
        for guest in snapshot.guests:
            sample = _finite(guest.cpu)
            if guest.status != "running" or sample is None:
                continue
            running.add(guest.vmid)
            self.vcpus[guest.vmid] = float(guest.maxcpu)
            ema = self.emas.get(guest.vmid)
            if ema is None or now - ema.last_time > WINDOW:
                ema = _Ema(value=sample, last_time=now, since=now)
                ema.live.append((now, sample))
                self.emas[guest.vmid] = ema
            else:
                ema.update(now, sample)
        for vmid in [v for v in self.emas if v not in running]:
            del self.emas[vmid]
            del self.vcpus[vmid]

    def needing_seed(self, vmids: list[int] | None) -> list[int]:
        pool = self.emas if vmids is None else {v: self.emas[v] for v in vmids
                                                if v in self.emas}
        return sorted(v for v, ema in pool.items() if not ema.ready() and not ema.seed_tried)

    def seed(self, vmid: int, samples: list[tuple[float, float]]) -> bool:
        ema = self.emas.get(vmid)
        return ema.seed(samples) if ema is not None else False


def bits(values: dict[int, float]) -> list[tuple[int, str]]:
    """Keys in order with each float's exact bits (-0.0 is not 0.0 here)."""
    return [(k, v.hex()) for k, v in values.items()]


def random_cpu(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.04:
        return math.nan
    if roll < 0.06:
        return math.inf
    if roll < 0.08:
        return -0.25
    if roll < 0.10:
        return -0.0
    if roll < 0.14:
        return rng.randrange(0, 3)  # an int where a float is expected
    return rng.random() * 1.2


def random_snapshot(rng: random.Random, time: float, pool: int) -> Snapshot:
    guests: list[Guest] = []
    for vmid in range(100, 100 + pool):
        roll = rng.random()
        if roll < 0.15:
            continue  # absent
        status = "stopped" if roll < 0.25 else ("paused" if roll < 0.27 else "running")
        guest = Guest(vmid, f"vm{vmid}", rng.choice(NODES), "qemu", status, random_cpu(rng),
                      rng.choice((1, 2, 4.0, 8, 0)), 1, 2)
        guests.append(guest)
        if rng.random() < 0.03:  # listed twice (e.g. a half-written answer)
            guests.append(Guest(vmid, f"vm{vmid}", rng.choice(NODES), "qemu", "running",
                                random_cpu(rng), rng.choice((2, 6.0)), 1, 2))
    rng.shuffle(guests)
    nodes = tuple(Node(n, True, rng.random(), CORES, 1, 2) for n in NODES)
    return Snapshot(time=time, nodes=nodes, guests=tuple(guests))


def random_rrd(rng: random.Random, now: float) -> list[tuple[float, float]]:
    start = now - rng.choice((30.0, 60.0, 120.0))
    return [(start + 10.0 * i + rng.choice((0.0, 0.5)),
             math.nan if rng.random() < 0.1 else rng.random())
            for i in range(rng.randrange(0, 14))]


def next_time(rng: random.Random, time: float) -> float:
    roll = rng.random()
    if roll < 0.04:
        return time  # the same snapshot again: ignored
    if roll < 0.06:
        return time - 3.0  # out of order: ignored
    if roll < 0.12:
        return time + rng.choice((61.0, 95.0, 300.0))  # a gap: every EMA restarts
    if roll < 0.20:
        return time + rng.choice((0.25, 0.5, 1.0))  # faster than nominal: the deque fills
    return time + rng.choice((4.5, 5.0, 5.0, 5.0, 5.5, 10.0))


@pytest.mark.parametrize("seed", range(6))
def test_guest_table_matches_one_ema_per_guest(seed: int) -> None:
    rng = random.Random(seed)
    table, reference = CpuEstimator(), PerGuest()
    time = 1_000_000.0
    seeded = migrated = 0
    for _step in range(400):
        time = next_time(rng, time)
        snapshot = random_snapshot(rng, time, pool=rng.choice((12, 30)))
        table.observe(snapshot)
        reference.observe(snapshot)
        assert bits(table.estimates().guest_cpu) == bits(
            {v: ema.value for v, ema in reference.emas.items()})

        asked = rng.sample(range(95, 135), 8) if rng.random() < 0.5 else None
        assert table.guests_needing_seed(asked) == reference.needing_seed(asked)
        for vmid in rng.sample(range(95, 135), rng.randrange(0, 4)):
            rrd = random_rrd(rng, time)
            assert table.seed_guest(vmid, rrd) == reference.seed(vmid, rrd)
            seeded += vmid in reference.emas and bool(rrd)
        assert bits(table.estimates().guest_cpu) == bits(
            {v: ema.value for v, ema in reference.emas.items()})

        if rng.random() < 0.1:
            vmid = rng.randrange(95, 135)
            before = table.estimates().node_cpu
            moved = table.apply_migration(vmid, "a", "b", CORES, CORES)
            ema, vcpus = reference.emas.get(vmid), reference.vcpus.get(vmid, 0.0)
            assert moved == (ema is not None and vcpus > 0.0)
            after = table.estimates().node_cpu
            if moved:
                assert ema is not None
                migrated += 1
                share = ema.value * vcpus / CORES
                assert after["a"] == min(1.0, max(0.0, before["a"] - share))
                assert after["b"] == min(1.0, max(0.0, before["b"] + share))
            else:
                assert after == before
    assert seeded > 50 and migrated > 10  # the run did exercise both


def test_a_guest_seeded_after_more_live_samples_than_a_deque_holds() -> None:
    """At 0.5 s cadence a minute holds more samples than `_HISTORY`: the
    table must replay only the last `_HISTORY`, as the deque did."""
    table, reference = CpuEstimator(), PerGuest()
    rng = random.Random(7)
    time = 0.0
    for _ in range(2 * _HISTORY):
        time += 0.5
        snapshot = Snapshot(time=time, nodes=(), guests=(
            Guest(1, "vm1", "a", "qemu", "running", rng.random(), 2, 1, 2),))
        table.observe(snapshot)
        reference.observe(snapshot)
    rrd = [(time - 61.0 + i, 0.5) for i in range(3)]
    assert table.seed_guest(1, rrd) and reference.seed(1, rrd)
    assert table.estimates().guest_cpu[1].hex() == reference.emas[1].value.hex()


def test_a_guest_listed_twice_fills_the_live_history_twice_as_fast() -> None:
    """A repeated entry weighs nothing but takes a live sample's place, so
    fewer snapshots are replayed when it is seeded (as with the deque)."""
    table, reference = CpuEstimator(), PerGuest()
    rng = random.Random(8)
    time = 0.0
    for _ in range(2 * _HISTORY):
        time += 0.5
        twice = tuple(Guest(1, "vm1", "a", "qemu", "running", rng.random(), 2, 1, 2)
                      for _ in range(2))
        snapshot = Snapshot(time=time, nodes=(), guests=twice)
        table.observe(snapshot)
        reference.observe(snapshot)
    rrd = [(time - 61.0 + i, 0.5) for i in range(3)]
    assert table.seed_guest(1, rrd) and reference.seed(1, rrd)
    assert table.estimates().guest_cpu[1].hex() == reference.emas[1].value.hex()
