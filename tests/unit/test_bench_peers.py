"""The peer driver of the quality benchmark (bench/proxlb_run.py), without
ProxLB: the clock it drives must leave the physics exactly as the stepped
baseline has them when the peer only reads, and must move while a peer's
migration is in flight.

The peers here are small real processes that talk HTTPS to the served
simulator with the CA and token the driver hands to ProxLB: one only reads
what ProxLB reads, one also asks for a migration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import harness, panels, peers
from bench.proxlb_run import (
    PROXLB_TOKEN,
    Invocation,
    Setting,
    run_schedule,
    with_proxlb_token,
)
from pvesim.cluster import Simulator
from simlab.inprocess import WARMUP, scenario_of

SCENARIO = harness.REPO / "tests" / "scenarios" / "cpu-hotspot" / "scenario.yaml"
DURATION = 1800.0
EVERY = Setting("reader", interval_hours=0.125)  # four runs in the half hour

CLIENT = """
import json, os, ssl, sys, urllib.request, yaml
c = yaml.safe_load(open(sys.argv[1]))["proxmox_api"]
ctx = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
auth = {"Authorization": f"PVEAPIToken={c['user']}!{c['token_id']}={c['token_secret']}"}
def call(method, path, body=None):
    req = urllib.request.Request(f"https://{c['hosts'][0]}/api2/json{path}", method=method,
                                 headers=auth, data=body)
    with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
        return json.load(resp)["data"]
for node in call("GET", "/nodes"):
    call("GET", f"/nodes/{node['node']}/rrddata?timeframe=hour")
    for g in call("GET", f"/nodes/{node['node']}/qemu"):
        call("GET", f"/nodes/{node['node']}/qemu/{g['vmid']}/rrddata?timeframe=hour")
if sys.argv[2] == "migrate":
    where = {g["vmid"]: g["node"] for g in call("GET", "/cluster/resources?type=vm")}
    if where[102] == "pve1":
        call("POST", "/nodes/pve1/qemu/102/migrate", b"target=pve2&online=1")
"""


def peer(mode: str) -> list[str]:
    return [sys.executable, "-c", CLIENT, "{config}", mode]


def served_run(mode: str) -> tuple[Simulator, list[Invocation]]:
    sim = Simulator(with_proxlb_token(scenario_of(SCENARIO)), seed=0)
    sim.advance(WARMUP)
    runs = run_schedule(sim, EVERY, duration=DURATION, command=peer(mode))
    return sim, list(runs)


def physics(sim: Simulator) -> dict[str, object]:
    m = sim.metrics.to_dict()
    m.pop("api_requests")  # the reads are counted there, and only there
    return m


def test_a_served_run_where_nobody_acts_is_the_stepped_baseline() -> None:
    base = harness.run(SCENARIO, seed=0, duration=DURATION, with_agent=False)
    sim, runs = served_run("read")
    assert len(runs) == 4
    assert all(r.returncode == 0 for r in runs)
    assert all(r.requests > 10 for r in runs)
    assert all(r.end == r.start for r in runs)  # clock stood still
    assert sim.now == base.sim.now
    assert physics(sim) == physics(base.sim)
    reads = [r for r in sim.request_log if r.token_id == PROXLB_TOKEN]
    assert reads and all(r.method == "GET" and r.status == 200 for r in reads)


def test_the_clock_moves_while_a_peer_migrates() -> None:
    base = harness.run(SCENARIO, seed=0, duration=DURATION, with_agent=False)
    sim, runs = served_run("migrate")
    moves = sim.metrics.to_dict()["migrations"]["list"]
    assert [(m["vmid"], m["source"], m["target"], m["ok"]) for m in moves] == [
        (102, "pve1", "pve2", True)]
    first = runs[0]
    # the run that asked for it lasted as long as the migration, in 5 s steps
    assert first.end - first.start >= moves[0]["end"] - moves[0]["start"]
    assert (first.end - first.start) % 5.0 == 0
    assert all(r.end == r.start for r in runs[1:])
    assert sim.now == base.sim.now
    assert physics(sim) != physics(base.sim)


# -- per-scenario results: merge, panels, constraints ----------------------------------------

def fake_run(balancers: dict[str, int], *, seed: int = 0, hours: float = 1.0) -> dict[str, Any]:
    """A peers.run_scenario result with a tiny real-shaped series per
    balancer (`balancers`: name → migrations), for the merge and panels."""
    def series(n: int) -> dict[str, Any]:
        return {"hours": [0.0, 0.5, 1.0], "cpu_max": 0.8, "memory_max": 0.8,
                "nodes": {"pve1": {"cpu": [0.9, 0.7, 0.6], "memory": [0.5, 0.5, 0.4]},
                          "pve2": {"cpu": [0.2, 0.4, 0.5], "memory": [0.3, 0.3, 0.4]}},
                "migrations": [{"hours": 0.2 + 0.01 * i, "vmid": 100 + i, "source": "pve1",
                                "target": "pve2", "ok": i != 1} for i in range(n)]}
    return {"scenario": "s", "file": "bench/scenarios/s.yaml", "seed": seed, "hours": hours,
            "balancers": {b: {"migrations": n, "cpu_starvation_core_seconds": 0.0,
                              "node_seconds_above_cpu_max": 10.0,
                              "node_seconds_above_memory_max": 0.0, "code": {"commit": b},
                              "series": series(n)}
                          for b, n in balancers.items()}}


def test_merge_replaces_only_the_balancers_rerun_and_keeps_their_order() -> None:
    old = fake_run({"none": 0, "proxlb-memory-12h": 7, "pve-balancer": 3})
    new = fake_run({"pve-balancer": 1})
    merged = peers.merge(old, new)
    assert list(merged["balancers"]) == ["none", "pve-balancer", "proxlb-memory-12h"]
    assert merged["balancers"]["pve-balancer"]["migrations"] == 1
    assert merged["balancers"]["proxlb-memory-12h"]["migrations"] == 7


def test_merge_drops_a_run_of_another_seed_or_length() -> None:
    old = fake_run({"none": 0, "proxlb-memory-12h": 7})
    assert list(peers.merge(old, fake_run({"pve-balancer": 1}, seed=1))["balancers"]) == [
        "pve-balancer"]
    assert list(peers.merge(old, fake_run({"pve-balancer": 1}, hours=72))["balancers"]) == [
        "pve-balancer"]


def test_record_merges_the_file_and_draws_one_row_per_balancer(tmp_path: Path) -> None:
    from PIL import Image

    peers.record(fake_run({"none": 0, "proxlb-memory-12h": 30}), tmp_path)
    with Image.open(peers.panel_file(tmp_path, "s")) as im:
        two_rows = im.size
    peers.record(fake_run({"pve-balancer": 2}), tmp_path)
    doc = json.loads(peers.scenario_file(tmp_path, "s").read_text())
    assert list(doc["balancers"]) == ["none", "pve-balancer", "proxlb-memory-12h"]
    assert doc["balancers"]["pve-balancer"]["code"] == {"commit": "pve-balancer"}
    with Image.open(peers.panel_file(tmp_path, "s")) as im:
        three_rows = im.size
    assert three_rows[0] == two_rows[0] and three_rows[1] > two_rows[1]


def test_series_keeps_at_most_max_points_and_every_migration() -> None:
    sim = Simulator(scenario_of(SCENARIO), seed=0)
    sim.advance(3600)
    sim.migrate(102, "pve2", online=True)
    sim.advance(600)
    s = panels.series(sim, max_points=25)
    assert 0 < len(s["hours"]) <= 25
    assert all(len(v["cpu"]) == len(s["hours"]) == len(v["memory"]) for v in s["nodes"].values())
    assert s["hours"] == sorted(s["hours"]) and s["hours"][-1] <= sim.now / 3600
    assert [(m["vmid"], m["target"], m["ok"]) for m in s["migrations"]] == [(102, "pve2", True)]


AFFINITY = harness.REPO / "bench" / "scenarios" / "bitbrains-affinity-8node.yaml"


def test_violations_name_the_rule_a_placement_breaks() -> None:
    sim = Simulator(scenario_of(AFFINITY), seed=0)
    placement = {g.vmid: g.node for g in sim.scenario.guests}
    assert peers._violations(placement, sim) == set()
    apart = {**placement, 3029: placement[3012]}  # a negative resource-affinity group
    assert peers._violations(apart, sim) == {("replicas-apart", "together")}
    assert peers._violations({**placement, 3013: "pve8"}, sim) == {("db-on-pve1-pve3", "outside")}
    assert peers._violations({**placement, 3000: "pve4"}, sim) == {("prefer-pve2", "not preferred")}
    assert peers._violations({**placement, 3026: "pve8"}, sim) == {("app-with-cache", "apart")}


def test_rule_figures_count_excluded_moves_and_time_off_the_preferred_node() -> None:
    sim = Simulator(scenario_of(AFFINITY), seed=0)
    sim.advance(WARMUP)
    sim.migrate(3042, "pve6", online=True)  # tagged pve-balancer-exclude, not HA
    sim.migrate(3000, "pve6", online=True)  # HA, prefers pve2: the HA stack fails it back
    sim.advance(900)
    r = peers.rule_figures(sim, token=None)
    assert r["moves_of_excluded"] == 1
    assert r["moves_of_pinned"] == 0
    assert r["seconds_rule_broken"].get("prefer-pve2 (not preferred)", 0) > 0
    assert sim.guest(3000).node == "pve2"


def test_bench_run_draws_the_panels_of_every_balancer_it_ran(tmp_path: Path) -> None:
    from bench import run_all

    rc = run_all.main(["--hours", "0.05", "--scenario", "bitbrains-imbalanced-ha", "--no-scale",
                       "--no-peers", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads(peers.scenario_file(tmp_path, "bitbrains-imbalanced-ha").read_text())
    assert list(doc["balancers"]) == ["none", "pve-balancer", "pve-auto-rebalance",
                                      "pve-auto-rebalance-dynamic"]
    assert all(f["series"]["hours"] for f in doc["balancers"].values())
    png = peers.panel_file(tmp_path, "bitbrains-imbalanced-ha")
    assert png.stat().st_size > 0
    assert f"]({png.name})" in (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "peers.json").read_text())
    assert all("series" not in f for r in summary["results"] for f in r["balancers"].values())


def test_the_table_puts_the_bound_beside_the_balancers_and_merge_keeps_it() -> None:
    old = {**fake_run({"none": 0}), "bound": {"cpu_starvation_core_seconds": 0.0,
                                              "node_seconds_above_cpu_max": 5.0,
                                              "node_seconds_above_memory_max": 0.0,
                                              "migrations": 2}}
    for f in old["balancers"].values():
        f.update({"sustained_cpu_episode_seconds": 0.0, "peak_node_cpu": 0.9,
                  "peak_node_memory": 0.5, "migrations_failed": 0, "migrated_gib": 0.0,
                  "ping_pongs": 0, "undone": 0, "api_requests_per_day": 0})
    merged = peers.merge(old, fake_run({"pve-balancer": 1}))
    assert merged["bound"] == old["bound"]
    text = peers.table(old)
    assert text.splitlines()[0].startswith("| figure | bound | no balancer |")
    above = next(line for line in text.splitlines() if line.startswith("| node-s above cpu"))
    assert above.split(" | ")[1:3] == ["5", "10 (2.00x) |"]
    assert peers.merge(old, fake_run({"pve-balancer": 1}, seed=3)).get("bound") is None


def test_auto_rebalance_keeps_the_scenarios_load_mode_unless_told() -> None:
    path = peers.ALL_HA["bitbrains-imbalanced-ha"]
    static = peers.with_auto_rebalance(path).options["crs"]
    dynamic = peers.with_auto_rebalance(path, "dynamic").options["crs"]
    assert static["ha-auto-rebalance"] == dynamic["ha-auto-rebalance"] == 1
    assert static["ha"] == "static" and dynamic["ha"] == "dynamic"
