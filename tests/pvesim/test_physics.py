"""Physics: fair-share CPU, starvation, memory, stat refresh lag, migrations."""

from __future__ import annotations

import pytest

from pvesim.state import GIB
from tests.pvesim.simhelp import data, from_dict, named

TWO_NODES = {
    "nodes": [
        {"name": "pve1", "cores": 8, "memory": "32GiB", "base_memory": "2GiB"},
        {"name": "pve2", "cores": 8, "memory": "32GiB", "base_memory": "2GiB"},
    ],
    "guests": [
        {
            "vmid": 101,
            "node": "pve1",
            "cores": 8,
            "memory": "8GiB",
            "demand": {"cpu": 8, "mem": "4GiB"},
        },
        {
            "vmid": 102,
            "node": "pve1",
            "cores": 4,
            "memory": "8GiB",
            "demand": {"cpu": 4, "mem": "4GiB"},
        },
        {
            "vmid": 103,
            "node": "pve1",
            "cores": 2,
            "memory": "8GiB",
            "demand": {"cpu": 1, "mem": "4GiB"},
        },
    ],
}


def test_fair_share_is_max_min_and_starvation_accumulates() -> None:
    sim = from_dict(TWO_NODES)
    sim.advance(100)
    g = sim.guests
    # demand 8 + 4 + 1 = 13 on 8 cores: the small one is served fully,
    # the other two split the rest equally (3.5 each)
    assert g[103].live_cpu == pytest.approx(1.0)
    assert g[101].live_cpu == pytest.approx(3.5)
    assert g[102].live_cpu == pytest.approx(3.5)
    assert sim.nodes["pve1"].live_cpu == pytest.approx(8.0)
    m = sim.metrics.to_dict()
    assert m["cpu_starvation_core_seconds"] == pytest.approx(5.0 * 100, rel=1e-6)
    assert m["nodes"]["pve2"]["cpu_starvation_core_seconds"] == 0
    assert m["node_seconds_above_cpu_max"] == pytest.approx(100)


def test_no_starvation_below_capacity() -> None:
    sim = named("balanced-3node")
    sim.advance(600)
    m = sim.metrics.to_dict()
    assert m["cpu_starvation_core_seconds"] == 0
    assert m["node_seconds_above_cpu_max"] == 0
    assert 0.3 < m["peak_node_cpu"] < 0.4


def test_memory_accounts_base_guests_and_overcommit() -> None:
    d = {
        "nodes": [{"name": "pve1", "cores": 4, "memory": "16GiB", "base_memory": "2GiB"}],
        "guests": [
            {"vmid": 101, "node": "pve1", "memory": "16GiB", "demand": {"cpu": 1, "mem": "10GiB"}},
            {"vmid": 102, "node": "pve1", "memory": "8GiB", "demand": {"cpu": 1, "mem": "6GiB"}},
        ],
    }
    sim = from_dict(d)
    sim.advance(50)
    n = sim.nodes["pve1"]
    assert n.live_mem > 18 * GIB  # 2 + 10 + 6 GiB plus QEMU overhead
    m = sim.metrics.to_dict()
    assert m["memory_overcommit_byte_seconds"] > 0
    assert m["peak_node_memory"] > 1.0


def test_published_stats_lag_the_physics() -> None:
    sim = from_dict(
        TWO_NODES
        | {
            "guests": [
                {
                    "vmid": 101,
                    "node": "pve1",
                    "cores": 8,
                    "memory": "8GiB",
                    "demand": {"cpu": 1, "mem": "4GiB", "steps": [{"at": 100, "cpu": 6}]},
                },
            ]
        }
    )
    sim.advance(100.5)
    assert sim.guests[101].live_cpu == pytest.approx(6)
    res = {r["id"]: r for r in data(sim, "GET", "/cluster/resources")}
    # pvestatd has not run since the step: the API still shows the old load
    assert res["qemu/101"]["cpu"] == pytest.approx(1 / 8)
    sim.advance(12)
    res = {r["id"]: r for r in data(sim, "GET", "/cluster/resources")}
    assert res["qemu/101"]["cpu"] == pytest.approx(6 / 8)
    assert res["node/pve1"]["cpu"] == pytest.approx(6 / 8)


def test_migration_takes_time_holds_lock_and_memory_on_both_nodes() -> None:
    sim = from_dict(
        TWO_NODES
        | {
            "guests": [
                {
                    "vmid": 101,
                    "node": "pve1",
                    "cores": 4,
                    "memory": "8GiB",
                    "demand": {"cpu": 2, "mem": "4GiB"},
                },
            ]
        }
    )
    sim.advance(20)
    before = sim.nodes["pve2"].live_mem
    upid = sim.migrate(101, "pve2", online=True)
    mig = sim.migrations[101]
    # ~4 GiB at 1 GiB/s minus dirtying, plus setup: between 5 and 8 s
    assert 5.0 < mig.end - mig.start < 8.0
    sim.advance(3)
    assert sim.guests[101].lock == "migrate"
    assert sim.guests[101].node == "pve1"
    assert sim.nodes["pve2"].live_mem > before + 4 * GIB  # copy held on the target
    assert sim.nodes["pve1"].live_mem > 4 * GIB + sim.nodes["pve1"].base_mem
    sim.advance(10)
    g = sim.guests[101]
    assert g.node == "pve2" and g.lock is None
    task = sim.find_task(upid)
    assert task is not None and task.exitstatus == "OK" and task.type == "qmigrate"
    rec = sim.metrics.to_dict()["migrations"]
    assert rec["count"] == 1 and rec["bytes"] > 4 * GIB


def test_busier_guest_migrates_slower() -> None:
    def duration(cpu: float) -> float:
        sim = from_dict(
            TWO_NODES
            | {
                "guests": [
                    {
                        "vmid": 101,
                        "node": "pve1",
                        "cores": 4,
                        "memory": "8GiB",
                        "demand": {"cpu": cpu, "mem": "6GiB"},
                    },
                ]
            }
        )
        sim.advance(10)
        sim.migrate(101, "pve2", online=True)
        m = sim.migrations[101]
        return m.end - m.start

    assert duration(4.0) > duration(0.1) + 0.5


def test_failed_migration_unlocks_and_guest_stays() -> None:
    sim = from_dict(TWO_NODES | {"sim": {"migration_failure_rate": 1.0}})
    sim.advance(10)
    upid = sim.migrate(103, "pve2", online=True)
    sim.advance(30)
    g = sim.guests[103]
    assert g.node == "pve1" and g.lock is None
    task = sim.find_task(upid)
    assert task is not None and not task.running and task.exitstatus != "OK"
    m = sim.metrics.to_dict()["migrations"]
    assert m["failed"] == 1 and m["count"] == 0


def test_target_power_loss_fails_migration() -> None:
    sim = from_dict(TWO_NODES)
    sim.advance(10)
    upid = sim.migrate(103, "pve2", online=True)
    sim.advance(1)
    sim.power_off("pve2")
    task = sim.find_task(upid)
    assert task is not None and task.exitstatus == "migration aborted"
    assert sim.guests[103].node == "pve1" and sim.guests[103].lock is None


def test_power_off_stops_guests_and_ha_guests_recover() -> None:
    sim = named("ha-guest")
    sim.advance(30)
    sim.power_off("pve1")
    assert not sim.guests[101].running and not sim.guests[104].running
    sim.advance(sim.params.fence_delay + 10)
    assert sim.guests[101].running and sim.guests[101].node != "pve1"
    # the negative affinity rule keeps 101 away from 102's node
    assert sim.guests[101].node != sim.guests[102].node
    assert sim.guests[104].node == "pve1" and not sim.guests[104].running


def test_maintenance_moves_ha_guests_and_brings_them_back() -> None:
    sim = named("ha-guest")
    sim.advance(30)
    sim.set_maintenance("pve1", True)
    sim.advance(60)
    assert sim.guests[101].node != "pve1"
    assert sim.guests[104].node == "pve1"  # not HA: stays
    sim.set_maintenance("pve1", False)
    sim.advance(60)
    assert sim.guests[101].node == "pve1"


def test_stepping_is_independent_of_slicing() -> None:
    a = named("cpu-hotspot", seed=3)
    b = named("cpu-hotspot", seed=3)
    a.advance(600)
    for _ in range(600):
        b.advance(1.0)
    ma, mb = a.metrics.to_dict(), b.metrics.to_dict()
    assert ma["node_seconds_above_cpu_max"] > 0
    for key in ("cpu_starvation_core_seconds", "node_seconds_above_cpu_max", "peak_node_cpu"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-6), key


def test_pve_auto_rebalance_moves_ha_guests_only_when_enabled() -> None:
    def run(enabled: int) -> list[tuple[int, str]]:
        sim = from_dict(
            {
                "nodes": [
                    {"name": "pve1", "cores": 8, "memory": "32GiB"},
                    {"name": "pve2", "cores": 8, "memory": "32GiB"},
                ],
                "guests": [
                    {"vmid": 101, "node": "pve1", "ha": True, "demand": {"cpu": 2, "mem": "8GiB"}},
                    {"vmid": 102, "node": "pve1", "ha": True, "demand": {"cpu": 2, "mem": "8GiB"}},
                    {"vmid": 103, "node": "pve1", "demand": {"cpu": 2, "mem": "8GiB"}},
                ],
                "options": {"crs": {"ha": "dynamic", "ha-auto-rebalance": enabled}},
            }
        )
        sim.advance(300)
        return [(m.vmid, m.user) for m in sim.metrics.migrations if m.ok]

    moved = run(1)
    assert len(moved) == 1 and moved[0][0] in (101, 102) and moved[0][1] == "root@pam"
    assert run(0) == []


def test_ha_failback_to_preferred_node_and_dependent_resources_move_along() -> None:
    sim = named("ha-guest")
    sim.advance(20)
    sim.migrate(103, "pve2", online=True)  # away from its preferred pve3
    sim.advance(20)
    assert sim.guests[103].node == "pve2"
    sim.advance(60)
    assert sim.guests[103].node == "pve3"  # the CRM brought it back
    moves = [(m.vmid, m.target) for m in sim.metrics.migrations if m.ok]
    assert moves == [(103, "pve2"), (103, "pve3")]

    together = from_dict(
        {
            "nodes": [{"name": "pve1"}, {"name": "pve2"}, {"name": "pve3"}],
            "guests": [
                {"vmid": 101, "node": "pve1", "ha": True, "demand": {"cpu": 1, "mem": "2GiB"}},
                {"vmid": 102, "node": "pve1", "ha": True, "demand": {"cpu": 1, "mem": "2GiB"}},
            ],
            "ha_rules": [
                {
                    "rule": "pair",
                    "type": "resource-affinity",
                    "resources": "vm:101,vm:102",
                    "affinity": "positive",
                },
            ],
        }
    )
    upid = together.migrate(101, "pve2", online=True)
    assert "hamigrate" in upid
    together.advance(60)
    assert [together.guests[v].node for v in (101, 102)] == ["pve2", "pve2"]


def test_isolated_node_self_fences_and_ha_guests_recover_elsewhere() -> None:
    sim = named("ha-guest")
    sim.advance(20)
    sim.cut_network("pve2")
    assert not sim.quorate("pve2") and sim.quorate("pve1")
    sim.advance(30)
    assert sim.guests[102].running and sim.guests[102].node == "pve2"  # still running, cut off
    sim.advance(sim.params.self_fence_delay)
    assert not sim.guests[102].running  # the watchdog reset the node
    sim.advance(sim.params.fence_delay)
    g = sim.guests[102]
    assert g.running and g.node not in ("pve2", sim.guests[101].node)


def test_two_of_three_down_loses_quorum_everywhere() -> None:
    sim = named("balanced-3node")
    sim.power_off("pve2")
    assert sim.quorate("pve1")
    sim.power_off("pve3")
    assert not sim.quorate("pve1")
    sim.power_on("pve3")
    assert sim.quorate("pve1") and sim.quorate("pve3")
    # non-HA guests stay stopped after the power cycle
    assert not sim.guests[301].running


def test_scenario_events_fire_on_time() -> None:
    sim = from_dict(
        TWO_NODES
        | {
            "nodes": TWO_NODES["nodes"] + [{"name": "pve3"}],
            "events": [
                {"at": 100, "action": "power_off", "node": "pve2"},
                {"at": 200, "action": "power_on", "node": "pve2"},
                {"at": 50, "action": "set_demand", "vmid": 103, "cpu": 2},
                {"at": 300, "action": "maintenance", "node": "pve3", "on": True},
                {"at": 400, "action": "migrate", "vmid": 103, "target": "pve2"},
            ],
        }
    )
    sim.advance(99)
    assert sim.nodes["pve2"].powered and sim.guests[103].live_demand == 2
    sim.advance(2)
    assert not sim.nodes["pve2"].powered
    sim.advance(100)
    assert sim.nodes["pve2"].powered
    sim.advance(100)
    assert sim.nodes["pve3"].maintenance
    sim.advance(130)
    assert sim.guests[103].node == "pve2"
    assert [m.user for m in sim.metrics.migrations] == ["root@pam"]


def test_pressure_stall_follows_starvation_and_overcommit() -> None:
    """PSI as PVE 9 publishes it: CPU pressure where the fair share leaves
    demand undelivered, memory pressure where touched memory exceeds RAM,
    none on a node with room; the same figures in status, lists and RRD."""
    d = {**TWO_NODES, "guests": [*TWO_NODES["guests"], {
        "vmid": 104, "node": "pve2", "cores": 2, "memory": "40GiB",
        "demand": {"cpu": 1, "mem": "36GiB"}}]}
    sim = from_dict(d)
    sim.advance(300)
    qemu = {x["vmid"]: x for x in data(sim, "GET", "/nodes/pve1/qemu")}
    # 101 wants 8, gets 3.5: 56 % of its demand waits; 103 is served fully
    assert qemu[101]["pressurecpusome"] == pytest.approx(100 * 4.5 / 8, abs=0.1)
    assert qemu[101]["pressurecpufull"] == pytest.approx(100 * (4.5 / 8) ** 2, abs=0.1)
    assert qemu[103]["pressurecpusome"] == 0
    assert qemu[101]["pressurememorysome"] == 0
    # pve2: 2 GiB base + 36 GiB touched + QEMU overhead on 32 GiB of RAM
    over = data(sim, "GET", "/nodes/pve2/qemu/104/status/current")
    assert over["pressurememorysome"] > 15
    assert over["pressurecpusome"] == 0
    rows = data(sim, "GET", "/nodes/pve1/rrddata", params={"timeframe": "hour"})
    last = [r for r in rows if "cpu" in r][-1]
    assert last["pressurecpusome"] == pytest.approx(100 * 5 / 13, abs=0.5)
    assert last["pressurememorysome"] == 0
    rows2 = data(sim, "GET", "/nodes/pve2/rrddata", params={"timeframe": "hour"})
    assert [r for r in rows2 if "cpu" in r][-1]["pressurememorysome"] > 15
    grrd = data(sim, "GET", "/nodes/pve1/qemu/101/rrddata", params={"timeframe": "hour"})
    assert [r for r in grrd if "cpu" in r][-1]["pressurecpusome"] == pytest.approx(
        100 * 4.5 / 8, abs=0.5)


def test_no_pressure_with_room() -> None:
    sim = named("balanced-3node")
    sim.advance(300)
    for node in sim.nodes:
        for g in data(sim, "GET", f"/nodes/{node}/qemu"):
            assert g["pressurecpusome"] == 0 and g["pressurememorysome"] == 0
