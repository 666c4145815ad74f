"""The one-minute CPU EMAs: time-aware weighting, cold start from RRD,
readiness, and the shift after a migration."""

from __future__ import annotations

import math

import pytest

from pve_balancer.ema import TAU, WINDOW, CpuEstimator, ema_alpha
from pve_balancer.model import Guest, Node, Snapshot


def snap(
    time: float,
    nodes: dict[str, float],
    guests: dict[int, tuple[str, float]] | None = None,
    *,
    offline: frozenset[str] = frozenset(),
    stopped: frozenset[int] = frozenset(),
    vcpus: float = 4,
    cores: int = 16,
) -> Snapshot:
    return Snapshot(
        time=time,
        nodes=tuple(Node(n, n not in offline, cpu, cores, 1, 2) for n, cpu in nodes.items()),
        guests=tuple(
            Guest(v, f"vm{v}", on, "qemu", "stopped" if v in stopped else "running", cpu,
                  vcpus, 1, 1)
            for v, (on, cpu) in (guests or {}).items()
        ),
    )


def test_alpha_at_nominal_cadence_is_two_over_thirteen() -> None:
    assert ema_alpha(5.0) == pytest.approx(2 / 13, rel=1e-12)
    assert abs(TAU - 29.93) < 0.01


def test_alpha_of_no_time_or_negative_time_is_zero() -> None:
    assert ema_alpha(0.0) == 0.0 and ema_alpha(-3.0) == 0.0 and ema_alpha(math.nan) == 0.0


def test_late_sample_weighs_more() -> None:
    assert ema_alpha(5.0) < ema_alpha(7.5) < ema_alpha(15.0) < 1.0


def test_one_late_step_equals_two_nominal_steps() -> None:
    # the point of time-awareness: a missed cycle does not change the average's span
    a, b = CpuEstimator(), CpuEstimator()
    for est in (a, b):
        est.observe(snap(0.0, {"pve1": 0.0}))
    a.observe(snap(5.0, {"pve1": 1.0}))
    a.observe(snap(10.0, {"pve1": 1.0}))
    b.observe(snap(10.0, {"pve1": 1.0}))
    assert a.estimates().node_cpu["pve1"] == pytest.approx(b.estimates().node_cpu["pve1"])


def test_update_is_exponential_moving_average() -> None:
    est = CpuEstimator()
    est.observe(snap(100.0, {"pve1": 0.2}, {101: ("pve1", 0.5)}))
    est.observe(snap(105.0, {"pve1": 0.8}, {101: ("pve1", 1.0)}))
    e = est.estimates()
    assert e.node_cpu["pve1"] == pytest.approx(0.2 + 2 / 13 * 0.6)
    assert e.guest_cpu[101] == pytest.approx(0.5 + 2 / 13 * 0.5)


def test_repeated_or_older_snapshot_is_ignored() -> None:
    est = CpuEstimator()
    est.observe(snap(100.0, {"pve1": 0.2}))
    est.observe(snap(100.0, {"pve1": 0.9}))
    est.observe(snap(90.0, {"pve1": 0.9}))
    assert est.estimates().node_cpu["pve1"] == 0.2


def test_stopped_and_gone_guests_are_forgotten_moved_guests_kept() -> None:
    est = CpuEstimator()
    est.observe(snap(0.0, {"a": 0.1, "b": 0.1}, {1: ("a", 0.9), 2: ("a", 0.5), 3: ("a", 0.4)}))
    est.observe(snap(5.0, {"a": 0.1, "b": 0.1}, {1: ("b", 0.9), 2: ("a", 0.5), 3: ("a", 0.0)},
                     stopped=frozenset({2})))
    est.observe(snap(10.0, {"a": 0.1, "b": 0.1}, {1: ("b", 0.9), 2: ("a", 0.5)}))
    guest_cpu = est.estimates().guest_cpu
    assert set(guest_cpu) == {1, 2}
    assert guest_cpu[1] == pytest.approx(0.9)  # history kept across the move
    assert guest_cpu[2] == pytest.approx(0.5)  # restarted from its new first sample


def test_readiness_needs_a_full_minute_of_samples() -> None:
    est = CpuEstimator()
    for t in range(0, 60, 5):
        est.observe(snap(float(t), {"pve1": 0.5}))
        assert not est.estimates().node_cpu_ready
    est.observe(snap(60.0, {"pve1": 0.5}))
    assert est.estimates().node_cpu_ready


def test_readiness_covers_every_online_node() -> None:
    est = CpuEstimator()
    for t in range(0, 65, 5):
        est.observe(snap(float(t), {"a": 0.5, "b": 0.5}, offline=frozenset({"b"})))
    assert est.estimates().node_cpu_ready  # offline b does not count
    est.observe(snap(70.0, {"a": 0.5, "b": 0.5}))
    assert not est.estimates().node_cpu_ready  # b came back: its EMA is cold
    assert est.nodes_needing_seed() == ["b"]
    assert "b" in est.estimates().node_cpu


def test_long_gap_restarts_the_average() -> None:
    est = CpuEstimator()
    for t in range(0, 65, 5):
        est.observe(snap(float(t), {"pve1": 0.1}))
    assert est.estimates().node_cpu_ready
    est.observe(snap(60.0 + WINDOW + 1, {"pve1": 0.9}))
    e = est.estimates()
    assert not e.node_cpu_ready and e.node_cpu["pve1"] == 0.9
    assert est.nodes_needing_seed() == ["pve1"]


def test_seeding_from_rrd_makes_node_ready_at_once() -> None:
    est = CpuEstimator()
    est.observe(snap(1000.0, {"pve1": 0.9, "pve2": 0.2}))
    assert est.nodes_needing_seed() == ["pve1", "pve2"]
    assert est.seed_node("pve1", [(940.0, 0.5), (1000.0, 0.5)])
    assert est.nodes_needing_seed() == ["pve2"]
    assert not est.estimates().node_cpu_ready
    assert est.seed_node("pve2", [(940.0, 0.2)])
    e = est.estimates()
    assert e.node_cpu_ready
    assert e.node_cpu["pve1"] == pytest.approx(0.5)  # one raw 0.9 does not dominate


def test_seeding_uses_only_the_last_minute() -> None:
    est = CpuEstimator()
    est.observe(snap(1000.0, {"pve1": 0.3}))
    samples = [(700.0, 1.0), (760.0, 1.0), (880.0, 0.3), (940.0, 0.3)]
    est.seed_node("pve1", list(reversed(samples)))  # order does not matter
    assert est.estimates().node_cpu["pve1"] == pytest.approx(0.3)


def test_seeding_skips_gaps_and_replays_newer_live_samples() -> None:
    est = CpuEstimator()
    est.observe(snap(1000.0, {"pve1": 0.8}))
    assert est.seed_node("pve1", [(940.0, 0.2), (970.0, math.nan), (980.0, 0.2)])
    # the live sample at 1000 s is 20 s newer than the last RRD point
    assert est.estimates().node_cpu["pve1"] == pytest.approx(0.2 + ema_alpha(20.0) * 0.6)


def test_failed_seeding_is_asked_once_then_a_minute_of_samples_is_needed() -> None:
    est = CpuEstimator()
    est.observe(snap(0.0, {"pve1": 0.5}))
    assert not est.seed_node("pve1", [])
    assert not est.seed_node("pve1", [(0.0, math.nan)])
    assert est.nodes_needing_seed() == []
    assert not est.estimates().node_cpu_ready
    assert not est.seed_node("pve9", [(0.0, 0.5)])  # unknown node: ignored


def test_guest_seeding() -> None:
    est = CpuEstimator()
    est.observe(snap(1000.0, {"pve1": 0.3}, {101: ("pve1", 0.0), 102: ("pve1", 0.5)}))
    assert est.guests_needing_seed() == [101, 102]
    assert est.guests_needing_seed([102, 999]) == [102]
    assert est.seed_guest(101, [(950.0, 0.6), (1000.0, 0.6)])
    assert est.estimates().guest_cpu[101] == pytest.approx(0.6)
    assert est.guests_needing_seed() == [102]


def test_apply_migration_shifts_the_host_share() -> None:
    est = CpuEstimator()
    est.observe(snap(0.0, {"a": 0.9, "b": 0.2}, {7: ("a", 0.5)}, vcpus=8, cores=16))
    assert est.apply_migration(7, "a", "b", 16, 32)
    e = est.estimates()
    assert e.node_cpu["a"] == pytest.approx(0.9 - 0.5 * 8 / 16)
    assert e.node_cpu["b"] == pytest.approx(0.2 + 0.5 * 8 / 32)
    assert e.guest_cpu[7] == pytest.approx(0.5)  # still a fraction of its own vCPUs


def test_apply_migration_of_unknown_guest_changes_nothing() -> None:
    est = CpuEstimator()
    est.observe(snap(0.0, {"a": 0.9, "b": 0.2}))
    assert not est.apply_migration(7, "a", "b", 16, 16)
    assert est.estimates().node_cpu == {"a": 0.9, "b": 0.2}


def test_stale_node_figures_after_migration_are_corrected_until_refreshed() -> None:
    est = CpuEstimator()
    est.observe(snap(0.0, {"a": 0.9, "b": 0.2}, {7: ("a", 0.5)}, vcpus=8))
    est.apply_migration(7, "a", "b", 16, 16)
    # PVE still reports the pre-migration node figures: they must not pull back
    est.observe(snap(5.0, {"a": 0.9, "b": 0.2}, {7: ("b", 0.5)}, vcpus=8))
    e = est.estimates()
    assert e.node_cpu["a"] == pytest.approx(0.65)
    assert e.node_cpu["b"] == pytest.approx(0.45)
    # refreshed figures are taken as they are
    est.observe(snap(10.0, {"a": 0.6, "b": 0.5}, {7: ("b", 0.5)}, vcpus=8))
    e = est.estimates()
    assert e.node_cpu["a"] == pytest.approx(0.65 + ema_alpha(5.0) * (0.6 - 0.65))
    assert e.node_cpu["b"] == pytest.approx(0.45 + ema_alpha(5.0) * (0.5 - 0.45))


def test_nan_samples_are_not_averaged_in() -> None:
    est = CpuEstimator()
    est.observe(snap(0.0, {"a": 0.5}, {1: ("a", 0.5)}))
    est.observe(snap(5.0, {"a": 0.5}, {1: ("a", math.nan)}))
    e = est.estimates()
    assert all(math.isfinite(v) for v in [*e.node_cpu.values(), *e.guest_cpu.values()])
