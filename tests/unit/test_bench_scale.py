"""The scale benchmark's bookkeeping at 64 nodes (bench/scale.py): what the
decision's floor and the RSS curve report, without asserting any timing."""

from __future__ import annotations

import json

import pytest

from bench import harness, scale
from pve_balancer.config import Config
from simlab.inprocess import InProcessLab, simulator


def test_decision_floor_times_every_part_on_the_served_body() -> None:
    sim = simulator(scale.cluster(4, 40), seed=0)
    config = Config(dry_run=True, seed=1)
    bodies: list[bytes] = []
    real = sim.handle

    def keep(req: object) -> object:
        resp = real(req)  # type: ignore[arg-type]
        if req.path.endswith("/cluster/resources"):  # type: ignore[attr-defined]
            bodies.append(resp.body)
        return resp

    sim.handle = keep  # type: ignore[assignment, method-assign]
    with harness.quiet_agent_logs():
        agent = InProcessLab.attach(sim, config).agent
        for _ in range(3):
            agent.run_cycle()
            sim.advance(config.interval)
        floor = scale.decision_floor(agent, bodies[-1], config, sim.now, repetitions=3)
    assert len(json.loads(bodies[-1])["data"]) == 44  # 4 nodes + 40 guests
    assert floor["body_bytes"] == len(bodies[-1])
    assert set(floor["parts_ms"]) == {"json_loads", "parse", "ema", "decide"}
    assert floor["repetitions"] == 3
    assert floor["decision_ms"] >= max(floor["parts_ms"].values())
    assert floor["ratio_to_json_loads"] > 0


def test_measure_one_counts_bytes_and_requests_per_day() -> None:
    row = scale.measure_one(3, 10, cycles=6)
    assert row["api_bytes_per_cycle"] >= row["resources_body_bytes"] > 0
    assert row["api_requests_per_day"] == pytest.approx(
        row["api_requests_per_cycle"] * 86400 / 5, rel=1e-3)
    assert "floor" not in row  # only the large sizes


def test_rss_curve_points() -> None:
    curve = scale.rss_over_cycles(3, 10, 100, every=50)
    assert [i for i, _ in curve["rss_mib"]] == [1, 50, 100]
    assert all(mib > 0 for _, mib in curve["rss_mib"])
    assert curve["cycles"] == 100


def test_agent_rss_serves_only_recorded_answers_after_warmup() -> None:
    curve = scale.agent_rss(3, 10, 160, every=50, warmup=5, attribute=True)
    assert [i for i, _ in curve["rss_mib"]] == [1, 50, 100, 150, 160]
    assert curve["answers_recorded"] > 0
    assert curve["answers_not_recorded"] == 0  # nothing reached the simulator
    assert curve["answers_replayed"] >= 2 * 160  # resources and tasks, every cycle
    assert [i for i, _ in curve["traced_kib_from_cycle_100"]] == [100, 150, 160]
    assert "pve_balancer" in curve["allocation_growth_kib_by_package_after_150_cycles"]


def test_agent_floor_names_the_tree_it_timed() -> None:
    floor = scale.agent_floor(4, 40, cycles=3, repetitions=3)
    assert floor["code"] == str(scale.REPO)
    assert floor["decision"]
    assert set(floor["parts_ms"]) == {"json_loads", "parse", "ema", "decide"}
