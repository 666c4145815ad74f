"""The peer driver of the quality benchmark (bench/proxlb_run.py), without
ProxLB: the clock it drives must leave the physics exactly as the stepped
baseline has them when the peer only reads, and must move while a peer's
migration is in flight.

The peers here are small real processes that talk HTTPS to the served
simulator with the CA and token the driver hands to ProxLB: one only reads
what ProxLB reads, one also asks for a migration.
"""

from __future__ import annotations

import sys

from bench import harness
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
