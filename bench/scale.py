"""Scale benchmark: how the agent's cost grows with the cluster.

For clusters of 3, 10 and 30 nodes holding 10, 100 and 1000 guests, in one
run, each size in its own Python process (so peak RSS belongs to that size
alone):

- policy alone: wall time of one `policy.decide()` on a snapshot taken from
  the simulator (pvesim) through the agent's real client, with its EMAs;
- full cycle: wall time of `Agent.run_cycle()` with proxmoxer attached
  in-process, split into the simulated API's share (pvesim building and
  serialising the answers — real PVE's work, not the agent's) and the rest
  (proxmoxer, requests, JSON parsing, the agent);
- API requests per cycle;
- peak RSS of the process (`ru_maxrss`) and RSS after import (psutil), and
  the tracemalloc peak of one cycle (Python allocations only).

Every cluster has one hot node (CPU ~90 %, the others ~40 %) so that each
decision walks the expensive path (CPU mode: every candidate on the source
against every target). The agent runs with `dry_run` so that it decides in
every measured cycle instead of pausing for a migration.

Figures are reported absolute and as ratios to the smallest cluster
(3 nodes, 10 guests). Timings are medians of many repetitions on a shared
machine; compare ratios, not absolute milliseconds, across machines.

    .venv/bin/python bench/scale.py [--cycles 60] [--out bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NODE_COUNTS = (3, 10, 30)
GUEST_COUNTS = (10, 100, 1000)
GIB = 1 << 30
HOT = 0.9
WARM = 0.4


def cluster(nodes: int, guests: int) -> dict[str, Any]:
    """A cluster of `nodes` x 32 cores with `guests` placed round-robin;
    pve1 is asked for ~90 % of its cores, the others ~40 %."""
    per_node = [guests // nodes + (1 if i < guests % nodes else 0) for i in range(nodes)]
    node_specs = []
    for i in range(nodes):
        mem = max(64, math.ceil(per_node[i] * 8 * 1.6 / 16) * 16)
        node_specs.append({"name": f"pve{i + 1}", "cores": 32, "memory": f"{mem}GiB",
                           "base_memory": "4GiB"})
    specs = []
    counters = [0] * nodes
    for g in range(guests):
        n = g % nodes
        counters[n] += 1
        share = (HOT if n == 0 else WARM) * 32 / per_node[n]
        cores = max(2, math.ceil(share * 1.5))
        # slightly unequal demands so there is a distinct busiest guest
        cpu = round(min(share * (1 + 0.2 * ((counters[n] % 5) - 2) / 2), cores), 4)
        specs.append({"vmid": 1000 + g, "name": f"vm{1000 + g}", "node": f"pve{n + 1}",
                      "cores": cores, "memory": "8GiB",
                      "demand": {"cpu": cpu, "mem": "4GiB"}})
    return {"name": f"scale-{nodes}n-{guests}g", "nodes": node_specs, "guests": specs}


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    """The process's RSS high-water mark. The kernel updates `ru_maxrss`
    lazily, so it can trail the current RSS; the larger of the two."""
    return max(int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,  # KiB on Linux
               _rss_bytes())


def measure_one(nodes: int, guests: int, cycles: int) -> dict[str, Any]:
    """Everything for one size, in this process."""
    from bench import harness

    with harness.quiet_agent_logs():
        return _measure_one(nodes, guests, cycles)


def _measure_one(nodes: int, guests: int, cycles: int) -> dict[str, Any]:
    import random

    from pve_balancer.config import Config
    from pve_balancer.policy import PolicyState, decide
    from simlab.inprocess import InProcessLab, simulator

    rss_import = _rss_bytes()
    sim = simulator(cluster(nodes, guests), seed=0)
    config = Config(dry_run=True, seed=1)
    agent = InProcessLab.attach(sim, config).agent

    handler_seconds = [0.0]
    real_handle = sim.handle

    def timed_handle(req: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_handle(req)
        finally:
            handler_seconds[0] += time.perf_counter() - t

    sim.handle = timed_handle  # type: ignore[method-assign]
    # warm-up: RRD seeding of nodes and candidates, first slow refreshes
    for _ in range(30):
        agent.run_cycle()
        sim.advance(config.interval)
    t_adv = 0.0
    cycle_times: list[float] = []
    api_times: list[float] = []
    sentences = set()
    log_start = len(sim.request_log)
    for _ in range(cycles):
        handler_seconds[0] = 0.0
        t = time.perf_counter()
        sentence = agent.run_cycle().sentence
        cycle_times.append(time.perf_counter() - t)
        api_times.append(handler_seconds[0])
        sentences.add(sentence.split(":")[0][:60])
        t = time.perf_counter()
        sim.advance(config.interval)
        t_adv += time.perf_counter() - t
    requests = len(sim.request_log) - log_start

    snapshot, _tasks = agent.env.sample(sim.now)
    estimates = agent.estimator.estimates()
    state = PolicyState()
    rng = random.Random(1)
    decision = decide(snapshot, estimates, config, state, rng)
    for _ in range(50):  # warm caches and the allocator before timing
        decide(snapshot, estimates, config, state, rng)
    policy_times: list[float] = []
    deadline = time.perf_counter() + 3.0
    while len(policy_times) < 20 or (len(policy_times) < 500 and time.perf_counter() < deadline):
        t = time.perf_counter()
        decide(snapshot, estimates, config, state, rng)
        policy_times.append(time.perf_counter() - t)

    tracemalloc.start()
    agent.run_cycle()
    _cur, cycle_alloc_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def ms(xs: Sequence[float]) -> dict[str, float]:
        s = sorted(xs)
        return {"median": round(1000 * statistics.median(s), 3),
                "p95": round(1000 * s[min(len(s) - 1, int(0.95 * len(s)))], 3)}

    agent_side = [c - a for c, a in zip(cycle_times, api_times, strict=True)]
    return {
        "nodes": nodes,
        "guests": guests,
        "cycles_measured": cycles,
        "decision": decision.reason[:160],
        "policy_ms": ms(policy_times),
        "policy_repetitions": len(policy_times),
        "cycle_ms": ms(cycle_times),
        "cycle_simulated_api_ms": ms(api_times),
        "cycle_client_and_agent_ms": ms(agent_side),
        "api_requests_per_cycle": round(requests / cycles, 3),
        "sim_advance_ms_per_5s": round(1000 * t_adv / cycles, 3),
        "rss_after_import_mib": round(rss_import / 2**20, 1),
        "peak_rss_mib": round(_peak_rss_bytes() / 2**20, 1),
        "cycle_tracemalloc_peak_kib": round(cycle_alloc_peak / 1024, 1),
    }


RATIO_FIELDS = (
    ("policy_ms", "median"),
    ("cycle_ms", "median"),
    ("cycle_client_and_agent_ms", "median"),
    ("cycle_simulated_api_ms", "median"),
    ("api_requests_per_cycle", None),
    ("peak_rss_mib", None),
    ("cycle_tracemalloc_peak_kib", None),
)


def _get(row: dict[str, Any], key: str, sub: str | None) -> float:
    v = row[key]
    return float(v[sub] if sub else v)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    for row in rows:
        row["ratio_to_smallest"] = {
            (f"{k}.{s}" if s else k): round(_get(row, k, s) / _get(base, k, s), 3)
            if _get(base, k, s) else None
            for k, s in RATIO_FIELDS
        }


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| nodes | guests | policy ms (x) | cycle ms (x) | of which simulated API ms | "
        "client+agent ms (x) | API req/cycle | peak RSS MiB (x) | cycle alloc peak KiB (x) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        x = r["ratio_to_smallest"]
        lines.append(
            f"| {r['nodes']} | {r['guests']} "
            f"| {r['policy_ms']['median']:.3f} ({x['policy_ms.median']:.1f}) "
            f"| {r['cycle_ms']['median']:.2f} ({x['cycle_ms.median']:.1f}) "
            f"| {r['cycle_simulated_api_ms']['median']:.2f} "
            f"| {r['cycle_client_and_agent_ms']['median']:.2f} "
            f"({x['cycle_client_and_agent_ms.median']:.1f}) "
            f"| {r['api_requests_per_cycle']:.2f} "
            f"| {r['peak_rss_mib']:.0f} ({x['peak_rss_mib']:.2f}) "
            f"| {r['cycle_tracemalloc_peak_kib']:.0f} ({x['cycle_tracemalloc_peak_kib']:.1f}) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=60, help="measured cycles per size")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    ap.add_argument("--one", nargs=2, type=int, metavar=("NODES", "GUESTS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cycles < 5:
        ap.error("--cycles must be at least 5")
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.cycles)))
        return 0
    t0 = time.perf_counter()
    rows = []
    for n in NODE_COUNTS:
        for g in GUEST_COUNTS:
            print(f"{n} nodes, {g} guests ...", flush=True)
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--one", str(n), str(g),
                 "--cycles", str(args.cycles)],
                check=True, capture_output=True, text=True, cwd=REPO)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    add_ratios(rows)
    doc = {
        "benchmark": "scale",
        "command": "python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "total_wall_seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(table(rows))
    print(f"\ntotal wall {doc['total_wall_seconds']} s; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
