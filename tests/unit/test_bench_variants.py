"""bench/variants.py: the hotspot day's variants are other days, counted right.

No timings asserted: only that a variant is another path of the same
cluster, that each started migration is counted under one decision kind,
and that the totals and table leave the benchmark day out of the sums.
"""

from __future__ import annotations

from typing import Any

from bench import make_hotspot, variants

SHORT = 0.1
"""Hours of each run here: the first relief moves of the day, not the day."""


def test_each_sentence_kind_is_recognised() -> None:
    kinds = [variants.decision_kind(s) for s in (
        "pve1 saturated (cpu 0.97 >= 0.95); no set of moves ...; cutting starvation: ...",
        "pve1 above cpu_max (0.87 > 0.80): migrate vm 1095 from pve4 to pve3: ... "
        "(move 1 of 2 planned, making room on pve4 for vm 1096, pve1 to 0.79)",
        "pve1 above cpu_max (0.93 > 0.80): migrate vm 1007 ... (move 1 of 1 planned, pve1 to 0.78)",
        "pve1 above memory_threshold (0.73 > 0.62 ...): migrate vm 2028 ...",
    )]
    assert kinds == ["saturated", "cascade", "plan of 1", "other"]


def test_a_variant_keeps_the_hot_vms_and_draws_other_ordinary_ones() -> None:
    day, variant = make_hotspot.build(), make_hotspot.build(make_hotspot.SEED + 1)

    def placed(scenario: dict[str, Any]) -> list[tuple[str, str]]:
        return [(str(g["name"]), str(g["node"])) for g in scenario["guests"]]  # type: ignore[attr-defined]

    hot_day = placed(day)[:make_hotspot.HOT]
    assert hot_day == placed(variant)[:make_hotspot.HOT]
    assert placed(day)[make_hotspot.HOT:] != placed(variant)[make_hotspot.HOT:]
    assert make_hotspot.build(make_hotspot.SEED + 1) == variant  # deterministic


def test_a_short_run_counts_every_migration_under_one_kind() -> None:
    day = variants.run_variant(1, (), SHORT)
    assert day["variant"] == 1
    # the hot nodes start saturated: the agent relieves them within minutes
    assert day["migrations"] >= 1
    assert sum(day["decisions_by_kind"].values()) == day["migrations"]
    assert day["node_seconds_above_cpu_max"] > 0 and day["gib_copied"] > 0


def test_totals_and_table_leave_the_benchmark_day_out_of_the_sums() -> None:
    def day(n: int, moves: int) -> dict[str, Any]:
        return {"variant": n, "migrations": moves, "node_seconds_above_cpu_max": 10 * moves,
                "cpu_starvation_core_seconds": 0, "gib_copied": moves, "undone": 0}

    days = [day(0, 61), day(1, 23), day(2, 36)]
    assert variants.totals(days)["migrations"] == 59
    assert variants.totals(days)["node_seconds_above_cpu_max"] == 590
    other = [day(0, 47), day(1, 32)]
    text = variants.table([("now", {"days": days, "totals": variants.totals(days)}),
                           ("rule", {"days": other, "totals": variants.totals(other)})])
    assert "| the benchmark day | 61 / 47 |" in text
    assert "| variant 2 | 36 / - |" in text
    assert "| the variants (1-6) | 59 / 32 |" in text
