"""pvesim's model of PVE's CRS auto-rebalance (`ha-auto-rebalance`), held to
what pve-ha-manager and proxmox-resource-scheduling do (docs/simulator.md,
"CRS auto-rebalance against pve-ha-manager"): the imbalance is the
coefficient of variation of the node loads over its bound sqrt(n - 1);
threshold and margin are percentages; `static` mode measures configured
vCPUs and memory, `dynamic` mode measured use; `basic` never balances."""

from __future__ import annotations

from typing import Any

import pytest

from pvesim.cluster import Simulator
from pvesim.ha import HaManager
from tests.pvesim.simhelp import from_dict


def test_imbalance_is_the_coefficient_of_variation_over_its_bound() -> None:
    # all load on one node is the upper bound, 1, for any node count
    assert HaManager._imbalance({"a": 1.0, "b": 0.0}) == pytest.approx(1.0)
    assert HaManager._imbalance({"a": 0.6, "b": 0.0, "c": 0.0, "d": 0.0}) == pytest.approx(1.0)
    assert HaManager._imbalance({"a": 0.4, "b": 0.4, "c": 0.4}) == pytest.approx(0.0, abs=1e-12)
    # loads 0.5/0.2/0.2/0.2: CV 0.47, over sqrt(3) 0.27
    cv = HaManager._imbalance({"a": 0.5, "b": 0.2, "c": 0.2, "d": 0.2})
    assert cv == pytest.approx(0.4724 / 3**0.5, rel=1e-3)


def four_nodes(crs: dict[str, Any], hot_cpu: float = 3.0) -> Simulator:
    """pve1 runs two HA guests and a plain one; pve2..pve4 one plain guest
    each: the load spread has a raw coefficient of variation above 0.3 but
    PVE's normalised imbalance below 0.3."""
    nodes = [{"name": f"pve{i}", "cores": 16, "memory": "64GiB"} for i in range(1, 5)]
    guests: list[dict[str, Any]] = [
        {"vmid": 101, "node": "pve1", "ha": True, "demand": {"cpu": hot_cpu, "mem": "8GiB"}},
        {"vmid": 102, "node": "pve1", "ha": True, "demand": {"cpu": hot_cpu, "mem": "8GiB"}},
    ]
    for i, node in enumerate(("pve1", "pve2", "pve3", "pve4")):
        guests.append({"vmid": 201 + i, "node": node, "demand": {"cpu": 2, "mem": "8GiB"}})
    return from_dict({"nodes": nodes, "guests": guests, "options": {"crs": crs}})


def rebalanced(sim: Simulator, seconds: float = 300) -> list[tuple[int, str]]:
    sim.advance(seconds)
    return [(m.vmid, m.target) for m in sim.metrics.migrations if m.ok]


def test_default_threshold_is_against_the_normalised_imbalance() -> None:
    sim = four_nodes({"ha": "dynamic", "ha-auto-rebalance": 1})
    sim.advance(30)
    ha = sim._ha
    loads = ha._node_loads(ha._node_used(False), False)
    vals = list(loads.values())
    mean = sum(vals) / len(vals)
    raw_cv = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5 / mean
    assert raw_cv > 0.3 > ha._imbalance(loads)  # the case the two measures disagree on
    assert rebalanced(sim) == []
    # the threshold is a percentage: 10 % is below this imbalance, so one
    # HA guest leaves pve1
    low = four_nodes({"ha": "dynamic", "ha-auto-rebalance": 1, "ha-auto-rebalance-threshold": 10})
    moved = rebalanced(low)
    assert len(moved) >= 1 and moved[0][0] in (101, 102) and moved[0][1] != "pve1"


def test_static_mode_balances_configured_size_not_measured_use() -> None:
    # pve1: two idle HA guests configured with 8 vCPUs and 24 GiB each;
    # pve2: a small plain guest that is busy. By configuration pve1 is full,
    # by measured use pve2 is the busier node.
    def sim(mode: str) -> Simulator:
        guests: list[dict[str, Any]] = [
            {
                "vmid": vmid,
                "node": "pve1",
                "ha": True,
                "cores": 8,
                "memory": "24GiB",
                "demand": {"cpu": 0.05, "mem": "1GiB"},
            }
            for vmid in (101, 102)
        ]
        guests.append(
            {
                "vmid": 201,
                "node": "pve2",
                "cores": 4,
                "memory": "8GiB",
                "demand": {"cpu": 4, "mem": "7GiB"},
            }
        )
        return from_dict(
            {
                "nodes": [{"name": f"pve{i}", "cores": 16, "memory": "64GiB"} for i in (1, 2)],
                "guests": guests,
                "options": {"crs": {"ha": mode, "ha-auto-rebalance": 1}},
            }
        )

    moved = rebalanced(sim("static"))
    assert len(moved) == 1 and moved[0][0] in (101, 102) and moved[0][1] == "pve2"
    assert rebalanced(sim("dynamic")) == []


def test_basic_mode_never_rebalances() -> None:
    crs = {"ha": "basic", "ha-auto-rebalance": 1, "ha-auto-rebalance-threshold": 1}
    assert rebalanced(four_nodes(crs, hot_cpu=6.0)) == []


def test_topsis_prefers_lower_memory_to_lower_cpu() -> None:
    # rows: 1 + RMS cpu, 1 + max cpu, 1 + RMS memory, 1 + max memory
    dominated = [1.5, 1.9, 1.5, 1.9]
    dominating = [1.4, 1.8, 1.4, 1.8]
    assert HaManager._topsis_best([dominated, dominating]) == 1
    # A is as much better on CPU as B is on memory: memory weighs 15 of 18
    a = [1.2, 1.4, 1.5, 1.7]
    b = [1.5, 1.7, 1.2, 1.4]
    assert HaManager._topsis_best([a, b]) == 1
    assert HaManager._topsis_best([b, a]) == 0
    assert HaManager._topsis_best([a, a]) == 0  # equal scores: the first


def test_topsis_method_moves_a_guest_off_the_hot_node() -> None:
    crs = {
        "ha": "dynamic",
        "ha-auto-rebalance": 1,
        "ha-auto-rebalance-method": "topsis",
        "ha-auto-rebalance-threshold": 10,
    }
    moved = rebalanced(four_nodes(crs))
    assert len(moved) >= 1 and moved[0][0] in (101, 102) and moved[0][1] != "pve1"
