"""The limit (bench/bound.py): lower bounds no balancer can beat.

The bound must never exceed what a run measured, with or without the agent
(it claims to hold for every placement), must be zero where the cluster has
room everywhere, and must count what its argument says on clusters small
enough to work out by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import bound, harness, quality

DURATION = 1200.0
WINDOW = DURATION + harness.WARMUP
KEYS = ("cpu_starvation_core_seconds", "node_seconds_above_cpu_max",
        "node_seconds_above_memory_max")


def cluster(loads: dict[str, list[float]], *, cores: int = 8, guest_cores: int = 6,
            memory: str = "64GiB", guest_mem: str = "2GiB") -> dict[str, Any]:
    """Nodes of `cores` cores; on each, guests of constant CPU demand."""
    guests = []
    vmid = 100
    for node, demands in loads.items():
        for c in demands:
            vmid += 1
            guests.append({"vmid": vmid, "node": node, "cores": guest_cores,
                           "memory": "8GiB", "demand": {"cpu": c, "mem": guest_mem}})
    nodes = [{"name": n, "cores": cores, "memory": memory, "base_memory": "2GiB"}
             for n in loads]
    return {"name": "bound-test", "nodes": nodes, "guests": guests}


def hotspot() -> dict[str, Any]:
    """pve1 asked for 19.5 of its 16 cores; pve2 and pve3 at 5 of 16: the
    cluster as a whole has room, so the fluid bound is zero, but pve1 must
    shed at least 6.7 cores (to 12.8), which takes its two largest guests."""
    return cluster({"pve1": [5.0, 4.0, 4.0, 3.0, 2.0, 1.5],
                    "pve2": [1.25] * 4, "pve3": [1.25] * 4}, cores=16)


def overloaded() -> dict[str, Any]:
    """Two 8-core nodes asked for 18 cores (2 more than exist), and more
    memory than 0.8 of both nodes together: some node is always above both
    maxima, and 2 cores starve whatever the placement."""
    return cluster({"pve1": [6.0, 5.0, 4.0], "pve2": [3.0]}, memory="16GiB",
                   guest_mem="6GiB")


Runs = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


def _runs(scenario: dict[str, Any]) -> Runs:
    limit = bound.bound(scenario, seed=3, duration=DURATION).to_dict()
    base = quality.summarize(harness.run(scenario, seed=3, duration=DURATION,
                                         with_agent=False))
    agent = quality.summarize(harness.run(scenario, seed=3, duration=DURATION,
                                          with_agent=True))
    return limit, base, agent


@pytest.fixture(scope="module")
def hotspot_runs() -> Runs:
    return _runs(hotspot())


@pytest.fixture(scope="module")
def overloaded_runs() -> Runs:
    return _runs(overloaded())


@pytest.mark.parametrize("which", ["hotspot_runs", "overloaded_runs"])
def test_bound_never_above_a_run(which: str, request: pytest.FixtureRequest) -> None:
    limit, base, agent = request.getfixturevalue(which)
    for key in KEYS:
        assert limit[key] <= base[key] + 1e-6, key
        assert limit[key] <= agent[key] + 1e-6, key


def test_hotspot_bound_is_zero_but_two_moves(hotspot_runs: Runs) -> None:
    limit, base, agent = hotspot_runs
    assert all(limit[k] == 0 for k in KEYS)
    assert base["cpu_starvation_core_seconds"] > 0
    assert limit["migrations"] == 2
    assert limit["migrations_by_node"] == {"pve1": 2, "pve2": 0, "pve3": 0}
    # the agent reached the relief the migration bound is stated for
    # (pve1 under cpu_max after its first minute), so it moved at least that many
    assert agent["node_seconds_above_cpu_max"] < base["node_seconds_above_cpu_max"]
    assert agent["migrations"]["count"] >= limit["migrations"]


def test_overloaded_bound_counts_the_unavoidable(overloaded_runs: Runs) -> None:
    limit, base, agent = overloaded_runs
    assert limit["cpu_starvation_core_seconds"] == pytest.approx(2.0 * WINDOW, rel=1e-6)
    assert limit["node_seconds_above_cpu_max"] == pytest.approx(WINDOW, rel=1e-6)
    assert limit["node_seconds_above_memory_max"] == pytest.approx(WINDOW, rel=1e-6)
    assert base["cpu_starvation_core_seconds"] > limit["cpu_starvation_core_seconds"]
    # the fluid bound has a node above at every step: no relief to buy
    assert limit["migrations"] == 0
    ratios = bound.ratio_to_bound(agent, limit)
    assert ratios["cpu_starvation_core_seconds"] is not None
    assert ratios["cpu_starvation_core_seconds"] >= 1.0
    assert ratios["migrations"] is None
    assert bound.ratio_to_bound(base, limit)["cpu_starvation_core_seconds"] == \
        pytest.approx(base["cpu_starvation_core_seconds"] / (2.0 * WINDOW), abs=1e-3)


def test_room_everywhere_bound_is_zero() -> None:
    limit = bound.bound(cluster({"pve1": [2.0, 1.0], "pve2": [3.0], "pve3": [1.0]}),
                        seed=0, duration=600).to_dict()
    assert limit["simulated_seconds"] == pytest.approx(600 + harness.WARMUP)
    assert all(limit[k] == 0 for k in (*KEYS, "migrations"))


def test_one_big_guest_forces_a_node_above_and_starves() -> None:
    """A 12-vCPU guest asking 10 cores on 8-core nodes: 2 cores starve and a
    node is above cpu_max wherever it runs, though the cluster has room."""
    limit = bound.bound(cluster({"pve1": [10.0], "pve2": [1.0], "pve3": [1.0]},
                                guest_cores=12), seed=0, duration=300).to_dict()
    window = 300 + harness.WARMUP
    assert limit["cpu_starvation_core_seconds"] == pytest.approx(2.0 * window, rel=1e-6)
    assert limit["node_seconds_above_cpu_max"] == pytest.approx(window, rel=1e-6)


def test_fewest_covering() -> None:
    assert bound.fewest_covering([1.0, 5.0, 4.0, 2.0], 6.7) == 2
    assert bound.fewest_covering([1.0, 5.0, 4.0, 2.0], 9.5) == 3
    assert bound.fewest_covering([3.0], 3.0) == 1
