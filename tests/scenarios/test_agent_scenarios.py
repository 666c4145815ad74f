"""The real agent against a simulated PVE 9 cluster, in virtual time, through
the real proxmoxer client (requests served in-process by pvesim).

Each test states a cluster, runs the agent's daemon loop, and judges it by
what reached the API (the simulator's request log) and where guests ended.
"""

from __future__ import annotations

import json
from typing import Any

from pve_balancer.config import Config
from simlab.inprocess import make_lab
from tests.conftest import guest_spec, nodes_spec
from tests.term_start import READING


def cpu_hotspot(ha: bool = False) -> dict[str, Any]:
    """pve1 (16 cores) at ~91 % CPU; pve2 and pve3 at ~31 %. Moving one
    3-core guest relieves pve1 and no second move is allowed or needed."""
    demands = [4.0, 3.0, 3.0, 2.0, 1.5, 1.0]
    guests = [guest_spec(101 + i, "pve1", cpu=c, ha=ha) for i, c in enumerate(demands)]
    guests += [guest_spec(201 + i, "pve2", cpu=1.25) for i in range(4)]
    guests += [guest_spec(301 + i, "pve3", cpu=1.25) for i in range(4)]
    return {"name": "cpu-hotspot", "nodes": nodes_spec(3), "guests": guests}


def memory_layout(counts: dict[str, int], **guest_extra: Any) -> dict[str, Any]:
    """Nodes of 64 GiB (4 GiB base) holding `counts[node]` guests that use
    all of their 4 GiB; CPU is low everywhere."""
    guests = []
    vmid = 100
    for node, count in counts.items():
        for _ in range(count):
            vmid += 1
            guests.append(guest_spec(vmid, node, cpu=0.1, **guest_extra))
    return {"name": "memory", "nodes": nodes_spec(len(counts)), "guests": guests}


def test_cpu_hotspot_relieved_by_one_migration_then_agent_stops() -> None:
    lab = make_lab(cpu_hotspot())
    busiest = 101
    lab.run(15 * 60)
    posts = lab.migrate_posts()
    assert len(posts) == 1, [s for _, s in lab.sentences if "migrat" in s]
    assert all(p.status == 200 for p in posts)
    moved = [v for v in range(101, 107) if lab.node_of(v) != "pve1"]
    assert len(moved) == 1 and busiest not in moved, "the busiest VM stays"
    estimates = lab.agent.estimator.estimates()
    assert estimates.node_cpu["pve1"] < 0.8
    assert max(estimates.node_cpu.values()) < 0.8
    # and it stays quiet afterwards
    lab.run(20 * 60)
    assert len(lab.migrate_posts()) == 1
    assert any(s.startswith("migrated vm") for _, s in lab.sentences)


def test_memory_hotspot_relieved_by_one_migration() -> None:
    lab = make_lab(memory_layout({"pve1": 12, "pve2": 9, "pve3": 9}))
    assert lab.mem_fraction("pve1") > 0.8
    lab.run(10 * 60)
    posts = lab.migrate_posts()
    assert len(posts) == 1, [s for _, s in lab.sentences if "migrat" in s]
    assert lab.mem_fraction("pve1") <= 0.8
    assert [d["mode"] for d in lab.started()] == ["memory"]
    lab.run(20 * 60)
    assert len(lab.migrate_posts()) == 1


def test_proactive_fires_above_1_2_times_mean() -> None:
    # pve1 at 75 % with the others at 44 %: threshold 1.2 x 54 % = 65 %.
    lab = make_lab(memory_layout({"pve1": 11, "pve2": 6, "pve3": 6}))
    lab.run(15 * 60)
    posts = lab.migrate_posts()
    # 75 % -> 69 % is still above 66 %; 69 % -> 63 % is not: two moves, no third
    assert len(posts) == 2
    assert all("/nodes/pve1/qemu/" in p.path for p in posts)
    assert {lab.node_of(int(p.path.split("/")[4])) for p in posts} == {"pve2", "pve3"}
    assert {d["mode"] for d in lab.started()} == {"proactive"}
    fractions = [lab.mem_fraction(n) for n in ("pve1", "pve2", "pve3")]
    mean = sum(fractions) / 3
    assert fractions[0] <= 1.2 * mean + 1e-9


def test_proactive_stays_quiet_at_or_below_1_2_times_mean() -> None:
    # pve1 at 62.5 % with the others at 44 %: threshold 1.2 x 50 % = 60 %... so
    # move one guest's worth less: pve1 at 56 %, threshold 1.2 x 48 % = 57.5 %.
    lab = make_lab(memory_layout({"pve1": 8, "pve2": 6, "pve3": 6}))
    lab.run(10 * 60)
    assert lab.migrate_posts() == []
    assert any("no action" in s for _, s in lab.sentences)


def balanced_cluster() -> dict[str, Any]:
    guests = []
    for n, node in enumerate(("pve1", "pve2", "pve3")):
        for i in range(5):
            vmid = 100 * (n + 1) + i
            spec = guest_spec(vmid, node, cpu=1.5, mem="6GiB", memory="8GiB")
            if i == 0:
                # short bursts: a 20 s spike every half hour must not trigger
                spec["demand"]["spikes"] = [{"at": 600 + 1800 * k + 300 * n,
                                             "until": 620 + 1800 * k + 300 * n, "cpu": 4}
                                            for k in range(4)]
            guests.append(spec)
    return {"name": "balanced", "nodes": nodes_spec(3), "guests": guests}


def test_balanced_cluster_two_hours_zero_migrations() -> None:
    lab = make_lab(balanced_cluster())
    lab.run(2 * 3600)
    assert lab.migrate_posts() == []
    assert len(lab.sentences) >= 2 * 3600 / 5 - 1
    assert all(s.startswith(("no action", "leading")) for _, s in lab.sentences), \
        {s for _, s in lab.sentences if not s.startswith("no action")}


def test_foreign_migration_pauses_the_agent() -> None:
    scenario = cpu_hotspot()
    # A big idle guest on pve2 that an operator moves to pve3 over a slow
    # link, before the agent starts: it takes about five minutes.
    scenario["guests"].append(guest_spec(401, "pve2", cpu=0.0, mem="8GiB", memory="8GiB"))
    scenario["sim"] = {"migration_bandwidth": "30MiB"}
    lab = make_lab(scenario)
    upid = lab.sim.migrate(401, "pve3", online=True)
    assert upid.startswith("UPID:")
    lab.run_until(lambda: lab.sim.running_migration(401) is None, limit=1200)
    ended = lab.sim.now
    assert ended - lab.started_at > 120, "the foreign migration outlasts the EMA warm-up"
    assert [p for p in lab.migrate_posts() if p.time < ended] == [], \
        "no POST while someone else migrates"
    paused = [s for t, s in lab.sentences if t < ended - 10 and "no action" in s
              and READING not in s]
    assert paused and all("migrat" in s for s in paused), paused[:3]
    lab.run(10 * 60)
    assert len(lab.migrate_posts()) == 1, "once it ended the agent relieves pve1"


def test_ha_guest_migrates_via_hamigrate_and_agent_waits_for_the_move() -> None:
    lab = make_lab(cpu_hotspot(ha=True))
    ok = lab.run_until(lambda: bool(lab.migrate_posts()), limit=600)
    assert ok
    post = lab.migrate_posts()[0]
    vmid = int(post.path.split("/")[4])
    tasks = [t for t in lab.sim.tasks if t.type == "hamigrate" and t.id == str(vmid)]
    assert tasks, "PVE answered with a hamigrate task"
    assert lab.agent.inflight is not None and lab.agent.inflight.ha
    lab.run_until(lambda: lab.agent.inflight is None, limit=600)
    assert lab.node_of(vmid) != "pve1"
    texts = [s for _, s in lab.sentences]
    assert any(s.startswith(("HA migration of", "waiting for the HA manager")) for s in texts)
    assert any(s.startswith("migrated vm") and "via HA" in s for s in texts), texts[-30:]
    lab.run(15 * 60)
    assert len(lab.migrate_posts()) == 1


def test_guest_with_local_disks_is_skipped_without_a_failed_post() -> None:
    disks = [{"volid": "local-lvm:vm-disk-0", "size": "32GiB"}]
    scenario = memory_layout({"pve1": 12, "pve2": 9, "pve3": 9})
    clean = 112
    for g in scenario["guests"]:
        if g["node"] == "pve1" and g["vmid"] != clean:
            g["local_disks"] = disks
    lab = make_lab(scenario)
    lab.run(10 * 60)
    posts = lab.migrate_posts()
    assert [p.path for p in posts] == [f"/nodes/pve1/qemu/{clean}/migrate"]
    assert all(p.status == 200 for p in posts)
    checked = lab.requests("GET", "/migrate")
    assert len(checked) >= 2, "preconditions were asked before acting"
    assert lab.node_of(clean) != "pve1"


def _steady_requests(node_count: int, per_node: int) -> tuple[int, int]:
    guests = []
    for n in range(node_count):
        for i in range(per_node):
            guests.append(guest_spec(1000 + n * 100 + i, f"pve{n + 1}", cpu=1.0))
    lab = make_lab({"name": f"size-{node_count}", "nodes": nodes_spec(node_count),
                    "guests": guests})
    lab.run(180)  # warm-up: RRD seeding, first slow refresh
    since = lab.sim.now
    cycles = len(lab.run(120))
    return len([r for r in lab.sim.request_log if r.time >= since]), cycles


def test_requests_per_cycle_do_not_grow_with_cluster_size() -> None:
    small, small_cycles = _steady_requests(3, 2)
    large, large_cycles = _steady_requests(30, 2)
    assert small_cycles == large_cycles == 24
    assert small == large
    assert small <= 2 * small_cycles + 8, "two requests per cycle plus the 60 s refreshes"


def test_config_disabled_observes_only() -> None:
    lab = make_lab(cpu_hotspot(), Config(enabled=False, seed=1))
    lab.run(5 * 60)
    assert lab.migrate_posts() == []
    assert any(s.startswith("observe only") for _, s in lab.sentences)


def test_dry_run_never_posts() -> None:
    lab = make_lab(cpu_hotspot(), Config(dry_run=True, seed=1))
    lab.run(5 * 60)
    assert lab.migrate_posts() == []
    assert any(s.startswith("dry run, not started:") for _, s in lab.sentences)


def test_backup_guard_holds_migrations_until_the_backup_ended() -> None:
    scenario = cpu_hotspot()
    # The agent starts at 00:02 (after the lab's warm-up); a job starts at
    # 00:03 and backs up one guest for three minutes.
    scenario["backup_jobs"] = [{"id": "nightly", "schedule": "00:03", "vmids": [201],
                                "seconds_per_guest": 180}]
    lab = make_lab(scenario)
    lab.run_until(lambda: bool(lab.migrate_posts()), limit=900)
    backups = [t for t in lab.sim.tasks if t.type == "vzdump"]
    assert backups, "the backup ran"
    first_post = lab.migrate_posts()[0].time
    assert first_post >= max(t.endtime for t in backups if t.endtime), \
        "no migration within the guard or while the backup ran"
    held = [s for t, s in lab.sentences if t < first_post - 5]
    assert any("backup" in s for s in held), held[:5]


def test_failed_migration_goes_into_cooldown_and_is_not_retried() -> None:
    lab = make_lab(cpu_hotspot(), Config(seed=1, vm_cooldown=1800))
    for vmid in range(101, 107):
        lab.sim.fail_next_migration(vmid, "migration problems")
    lab.run_until(lambda: any("failed after" in s for _, s in lab.sentences), limit=600)
    failed = lab.migrate_posts()
    assert len(failed) == 1
    vmid = int(failed[0].path.split("/")[4])
    assert vmid in lab.agent.cooldown_until
    assert lab.node_of(vmid) == "pve1"
    lab.run(15 * 60)
    again = [p for p in lab.migrate_posts()[1:] if f"/qemu/{vmid}/" in p.path]
    assert again == [], "a failed guest is not retried within its cooldown"


def test_leader_publishes_status_at_a_modest_rate(tmp_path: Any) -> None:
    lab = make_lab(cpu_hotspot(), status_dir=tmp_path)
    lab.run(10 * 60)
    writer = lab.agent.env.status
    assert writer is not None
    # 10 min at one refresh per 30 s, plus one write per decision event
    events = len(lab.migrate_posts()) * 2
    assert writer.writes <= 10 * 60 / 30 + events + 2
    doc = json.loads((tmp_path / "pve-balancer" / "status.json").read_text())
    assert doc["leader"] == "pve1"
    assert [d["result"] for d in doc["decisions"]] == ["started", "ok"]
    written_at = [s for t, s in lab.sentences if t == doc["updated"]]
    assert written_at == [doc["last_action"]], "the file shows the cycle that wrote it"
    assert {n["name"] for n in doc["nodes"]} == {"pve1", "pve2", "pve3"}


def test_api_faults_cost_cycles_not_the_agent_nor_extra_migrations() -> None:
    lab = make_lab(cpu_hotspot(), faults=True)
    f = lab.faults
    f.add(kind="malformed_json", method="GET", path="/cluster/resources", count=2)
    f.add(kind="truncated_json", method="GET", path="/cluster/tasks", count=1)
    f.add(kind="missing_fields", method="GET", path="/cluster/resources",
          fields=("mem", "maxmem", "cpu"), count=2)
    f.add(kind="http_error", method="GET", path="/cluster/ha/rules", status=500, count=1)
    f.add(kind="latency", method="GET", path="/cluster/tasks", seconds=2.0, count=3)
    # the migrate POST is carried out but its answer never arrives
    f.add(kind="timeout", method="POST", path="/nodes/*/qemu/*/migrate", seconds=10.0,
          executed=True, count=1)
    lab.run(20 * 60)
    texts = [s for _, s in lab.sentences]
    assert any("cannot reach the PVE API" in s and "not JSON" in s for s in texts), texts[:6]
    assert not any(s.startswith("cycle failed") for s in texts), "faults are named, not crashes"
    posts = lab.migrate_posts()
    assert len(posts) == 1, "the lost answer is not retried as a second migration"
    vmid = int(posts[0].path.split("/")[4])
    assert lab.node_of(vmid) != "pve1"
    assert any("checking whether it started" in s for s in texts)
    assert any(s.startswith("migrated vm") for s in texts), "and it was followed to its end"
    assert max(lab.agent.estimator.estimates().node_cpu.values()) < 0.8


def test_maintenance_node_and_pinned_guests_are_respected() -> None:
    scenario = cpu_hotspot(ha=True)
    # Every movable VM on pve1 but vm 104 is pinned by a node-affinity rule;
    # pve2 is in HA maintenance. The only allowed move: vm 104 to pve3.
    scenario["ha_rules"] = [{"rule": "pin-pve1", "type": "node-affinity",
                             "resources": ["vm:102", "vm:103", "vm:105", "vm:106"],
                             "nodes": ["pve1"]}]
    lab = make_lab(scenario, warmup=0)
    lab.sim.set_maintenance("pve2", True)
    lab.sim.advance(120)
    lab.run(10 * 60)
    paths = [p.path for p in lab.migrate_posts()]
    assert paths == ["/nodes/pve1/qemu/104/migrate"], paths
    assert lab.node_of(104) == "pve3"


def test_migrate_post_is_live_with_conntrack_state_on_pve9() -> None:
    from simlab.inprocess import attach_client, simulator

    sim = simulator(cpu_hotspot(), warmup=0)
    seen: list[Any] = []

    class Recorder:
        def handle(self, request: Any) -> Any:
            seen.append(request)
            return sim.handle(request)

        def node_reachable(self, name: str) -> bool:
            return bool(sim.node_reachable(name))

    client = attach_client(sim, "pve1", handler=Recorder())
    upid = client.migrate("pve1", 104, "pve2")
    post = next(r for r in seen if r.method == "POST")
    assert post.path == "/nodes/pve1/qemu/104/migrate"
    assert post.params == {"target": "pve2", "online": "1", "with-conntrack-state": "1"}
    assert post.headers["authorization"].startswith("PVEAPIToken=pve-balancer@pve!agent=")
    assert client.task_status(upid).running
    assert [r.path for r in seen if r.method == "GET"] == ["/version",
                                                           f"/nodes/pve1/tasks/{upid}/status"]
