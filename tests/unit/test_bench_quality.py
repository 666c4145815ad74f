"""The benchmark harness end to end on a tiny cluster, and its bookkeeping.

No timings are asserted (those are measured by bench/, not tested): only that
a baseline and an agent run of one scenario produce sane, comparable figures,
and that the figures that judge migration economy count what they claim.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import harness, quality, scale

GIB = 1 << 30


def tiny_hotspot() -> dict[str, Any]:
    """pve1 (16 cores) asked for 19.5 cores: its guests starve until some
    move; pve2 and pve3 have room (5 of 16 cores each)."""
    demands = [5.0, 4.0, 4.0, 3.0, 2.0, 1.5]
    guests = [{"vmid": 101 + i, "node": "pve1", "cores": 6, "memory": "4GiB",
               "demand": {"cpu": c, "mem": "3GiB"}} for i, c in enumerate(demands)]
    for n, node in ((2, "pve2"), (3, "pve3")):
        guests += [{"vmid": 100 * n + i, "node": node, "cores": 4, "memory": "4GiB",
                    "demand": {"cpu": 1.25, "mem": "3GiB"}} for i in range(4)]
    nodes = [{"name": f"pve{i}", "cores": 16, "memory": "64GiB", "base_memory": "4GiB"}
             for i in (1, 2, 3)]
    return {"name": "tiny-hotspot", "nodes": nodes, "guests": guests}


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Any], dict[str, Any], harness.RunResult]:
    base = harness.run(tiny_hotspot(), seed=3, duration=1200, with_agent=False)
    agent = harness.run(tiny_hotspot(), seed=3, duration=1200, with_agent=True)
    return quality.summarize(base), quality.summarize(agent), agent


def test_baseline_starves_and_never_migrates(runs: Any) -> None:
    base, _agent, _ = runs
    # 3.5 cores short on pve1 for the whole 22 minutes (warm-up included)
    expected = 3.5 * (1200 + harness.WARMUP)
    assert base["cpu_starvation_core_seconds"] == pytest.approx(expected, rel=0.01)
    assert base["migrations"]["count"] == 0
    assert base["peak_node_cpu"] == pytest.approx(1.0)
    assert "agent" not in base


def test_agent_relieves_starvation_with_few_migrations(runs: Any) -> None:
    base, agent, result = runs
    assert agent["cpu_starvation_core_seconds"] < 0.5 * base["cpu_starvation_core_seconds"]
    assert agent["node_seconds_above_cpu_max"] < base["node_seconds_above_cpu_max"]
    moves = agent["migrations"]
    assert 1 <= moves["count"] <= 3 and moves["failed"] == 0
    assert agent["migrations_by_agent"] == moves["count"]
    assert moves["ping_pongs"] == 0 and agent["economy"]["undone"] == 0
    assert moves["bytes"] > 0 and moves["seconds"] > 0
    # the busiest guest (101) is never the one moved
    assert all(m["vmid"] != 101 for m in result.metrics["migrations"]["list"])
    a = agent["agent"]
    assert a["cycles"] == 1200 / 5
    assert a["api_requests"] >= 2 * a["cycles"]
    assert a["api_requests_per_cycle"] < 4
    assert set(a["migrations_started_by_mode"]) == {"cpu"}
    assert agent["agent_moves_by_mode"] == {"cpu": moves["count"]}
    assert agent["economy"]["undone_by_modes"] == {}


def test_ratios_and_table(runs: Any) -> None:
    base, agent, _ = runs
    ratio = quality._ratio(agent["cpu_starvation_core_seconds"],
                           base["cpu_starvation_core_seconds"])
    assert ratio is not None and 0 <= ratio < 0.5
    assert quality._ratio(0.0, 0.0) is None
    text = quality.table([{"scenario": "tiny", "baseline": base, "agent": agent,
                           "ratio_agent_to_baseline": {k: quality._ratio(
                               float(agent[k]), float(base[k])) for k in quality.RATIO_KEYS}}])
    assert "| CPU starvation (core-s) |" in text and "n/a" in text


def _mig(vmid: int, source: str, target: str, start: float, ok: bool = True) -> dict[str, Any]:
    return {"vmid": vmid, "source": source, "target": target, "start": start,
            "end": start + 10, "ok": ok}


def test_undone_and_per_episode_accounting() -> None:
    episodes = [("pve1", "cpu", 0.0, 100.0, True), ("pve2", "cpu", 500.0, 900.0, False)]
    migrations = [
        _mig(1, "pve1", "pve2", 10),   # in pve1's episode
        _mig(2, "pve1", "pve3", 50),   # in pve1's episode
        _mig(1, "pve2", "pve1", 600),  # undoes the first, inside pve2's open episode
        _mig(3, "pve3", "pve1", 200),  # outside any episode
        _mig(2, "pve3", "pve2", 300),  # moves on, does not undo
        _mig(4, "pve1", "pve2", 20, ok=False),
    ]
    fig = quality.migration_figures(migrations, episodes)
    assert fig["undone"] == 1
    assert fig["undone_list"] == [{"vmid": 1, "away_seconds": 590.0, "moved_at": 10,
                                   "undone_at": 600}]
    assert fig["started_outside_episodes"] == 2
    assert fig["episodes_acted_on"] == 2
    assert fig["episodes_acted_on_and_relieved"] == 1
    assert fig["migrations_per_relieved_episode"] == 3.0


def test_split_by_agent_attributes_ha_moves_to_the_post() -> None:
    class Rec:
        def __init__(self, t: float, path: str, token: str = harness.AGENT_TOKEN,
                     status: int = 200) -> None:
            self.time, self.path, self.token_id, self.status = t, path, token, status
            self.method = "POST"

    log = [Rec(100.0, "/nodes/pve1/qemu/7/migrate"),
           Rec(200.0, "/nodes/pve1/qemu/8/migrate", status=500),
           Rec(300.0, "/nodes/pve1/qemu/9/migrate", token="root@pam!admin")]
    migrations = [_mig(7, "pve1", "pve2", 105), _mig(8, "pve1", "pve2", 201),
                  _mig(9, "pve1", "pve2", 301), _mig(7, "pve2", "pve1", 1000)]
    mine, others = quality.split_by_agent(migrations, log)
    assert [m["start"] for m in mine] == [105]
    assert [m["vmid"] for m in others] == [8, 9, 7]


def test_scale_cluster_shape() -> None:
    spec = scale.cluster(3, 10)
    assert [n["name"] for n in spec["nodes"]] == ["pve1", "pve2", "pve3"]
    assert len(spec["guests"]) == 10
    on = {f"pve{i}": sum(g["demand"]["cpu"] for g in spec["guests"] if g["node"] == f"pve{i}")
          for i in (1, 2, 3)}
    assert on["pve1"] / 32 == pytest.approx(scale.HOT, rel=0.1)
    assert on["pve2"] / 32 == pytest.approx(scale.WARM, rel=0.1)
    assert all(g["demand"]["cpu"] <= g["cores"] for g in spec["guests"])


def test_scale_measure_one_smallest() -> None:
    row = scale.measure_one(3, 10, cycles=5)
    assert row["decision"].startswith("pve1 above cpu_max")
    assert row["api_requests_per_cycle"] >= 2
    assert row["peak_rss_mib"] >= row["rss_after_import_mib"] > 0
    assert row["policy_repetitions"] >= 20


def test_runs_leave_the_agent_logger_level_alone() -> None:
    import logging

    logger = logging.getLogger("pve_balancer")
    before = logger.level
    harness.run(tiny_hotspot(), seed=1, duration=30, with_agent=True)
    scale.measure_one(3, 10, cycles=5)
    assert logger.level == before
