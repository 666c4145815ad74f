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

At 64 nodes, with 1,000 and 10,000 guests, two more figures:

- the decision's floor: the agent's own work on one `/cluster/resources`
  answer (the same body the simulator just served: JSON decoding, the
  parse into the model, the EMA update, `policy.decide()`), each part
  timed, next to a bare `json.loads` of that body, which any client must
  pay; the target is the whole within 2x of it;
- API bytes per cycle (response bodies) and per day, and the process's
  RSS every 50 cycles over `--rss-cycles` full cycles (flat or growing?).

Figures are reported absolute and as ratios to the smallest cluster
(3 nodes, 10 guests). Timings are medians of many repetitions on a shared
machine; compare ratios, not absolute milliseconds, across machines.

    .venv/bin/python bench/scale.py [--cycles 60] [--out bench/results/scale.json]

Two quicker parts alone, each writing its own JSON to `--out`:

- `--floor NODES GUESTS [--compare TREE ...] [--rounds 2]`: only the
  decision's floor, after 15 agent cycles, for this tree and each TREE
  (another `pve_balancer`, e.g. `git archive COMMIT pve_balancer | tar -x
  -C TREE`) in turn, each run in a fresh process on the same served body:
  a change is measured before and after alternately on one machine;
- `--agent-rss NODES GUESTS [--rss-cycles 1000]`: the agent alone, full
  `Agent.run_cycle()` with its real client, against answers recorded from
  the simulator during a warm-up and then replayed (the simulator stands
  still, so what grows is the agent's): RSS and the allocations that grew,
  by package, every 50 cycles.
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
LARGE = ((64, 1000), (64, 10000))
"""The sizes that also get the floor, bytes and RSS figures."""
DAY = 86400.0
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
    body_bytes = [0]
    resources_body = [b""]
    real_handle = sim.handle

    def timed_handle(req: Any) -> Any:
        t = time.perf_counter()
        try:
            resp = real_handle(req)
        finally:
            handler_seconds[0] += time.perf_counter() - t
        body_bytes[0] += len(resp.body)
        if req.path.endswith("/cluster/resources"):
            resources_body[0] = resp.body
        return resp

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
    body_bytes[0] = 0
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
    bytes_per_cycle = body_bytes[0] / cycles

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
    large = (nodes, guests) in LARGE
    floor = decision_floor(agent, resources_body[0], config, sim.now) if large else None
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
        "api_bytes_per_cycle": round(bytes_per_cycle),
        "api_requests_per_day": round(requests / cycles * DAY / config.interval),
        "api_mib_per_day": round(bytes_per_cycle * DAY / config.interval / 2**20, 1),
        "resources_body_bytes": len(resources_body[0]),
        **({"floor": floor} if floor is not None else {}),
    }


def decision_floor(agent: Any, body: bytes, config: Any, now: float,
                   repetitions: int = 25) -> dict[str, Any]:
    """The agent's work on one `/cluster/resources` body, part by part,
    next to decoding it with `json.loads` alone. The snapshot's other
    fields (tasks, rules, backups) come from the agent's last real sample;
    each repetition is a new sample time, so the EMA update does its full
    work every time. Timed in CPU time of this process
    (`time.process_time`): the machine is shared, and other work would
    otherwise stretch the parts unevenly."""
    template, _tasks = agent.env.sample(now)
    return floor_parts(template, agent.estimator, body, config, repetitions)


def floor_parts(template: Any, estimator: Any, body: bytes, config: Any,
                repetitions: int = 25) -> dict[str, Any]:
    """`decision_floor` on a given snapshot template and estimator."""
    clock = time.process_time
    import dataclasses
    import random

    from pve_balancer.policy import PolicyState, decide
    from pve_balancer.pve import parse_resources

    state = PolicyState()
    rng = random.Random(1)
    parts: dict[str, list[float]] = {"json_loads": [], "parse": [], "ema": [], "decide": []}
    floor: list[float] = []
    when = template.time
    reason = ""
    for _ in range(repetitions):
        t0 = clock()
        json.loads(body)
        floor.append(clock() - t0)
        when += config.interval
        t0 = clock()
        data = json.loads(body)["data"]
        t1 = clock()
        nodes, guests = parse_resources(data)
        snapshot = dataclasses.replace(template, time=when, nodes=nodes, guests=guests)
        t2 = clock()
        estimator.observe(snapshot)
        estimates = estimator.estimates()
        t3 = clock()
        reason = decide(snapshot, estimates, config, state, rng).reason
        t4 = clock()
        for key, dt in (("json_loads", t1 - t0), ("parse", t2 - t1), ("ema", t3 - t2),
                        ("decide", t4 - t3)):
            parts[key].append(dt)
    med = {k: round(1000 * statistics.median(v), 3) for k, v in parts.items()}
    total = [sum(v[i] for v in parts.values()) for i in range(repetitions)]
    floor_ms = 1000 * statistics.median(floor)
    total_ms = 1000 * statistics.median(total)
    return {"body_bytes": len(body), "json_loads_ms": round(floor_ms, 3),
            "decision_ms": round(total_ms, 3), "parts_ms": med,
            "ratio_to_json_loads": round(total_ms / floor_ms, 2), "repetitions": repetitions,
            "decision": reason[:160]}


def rss_over_cycles(nodes: int, guests: int, cycles: int, every: int = 50,
                    attribute: bool = False) -> dict[str, Any]:
    """Full agent cycles (with the simulator advancing between them) and
    the process's RSS every `every` cycles. The process holds the simulator
    too, so with `attribute` the Python allocations that grew between
    cycle 100 and the last are summed by the package that made them
    (tracemalloc, which slows the run: the RSS figures are then not
    comparable with a run without it)."""
    from bench import harness
    from pve_balancer.config import Config
    from simlab.inprocess import InProcessLab, simulator

    with harness.quiet_agent_logs():
        sim = simulator(cluster(nodes, guests), seed=0)
        config = Config(dry_run=True, seed=1)
        agent = InProcessLab.attach(sim, config).agent
        points: list[tuple[int, float]] = []
        growth: dict[str, float] = {}
        first: Any = None
        t0 = time.perf_counter()
        for i in range(1, cycles + 1):
            agent.run_cycle()
            sim.advance(config.interval)
            if i % every == 0 or i in (1, cycles):
                points.append((i, round(_rss_bytes() / 2**20, 1)))
            if attribute and i == 100:
                tracemalloc.start()
            if attribute and i == 150:  # every per-cycle object has been replaced once
                first = tracemalloc.take_snapshot()
        if first is not None:
            for stat in tracemalloc.take_snapshot().compare_to(first, "filename"):
                name = str(stat.traceback[0].filename)
                pkg = next((p for p in ("pve_balancer", "pvesim", "proxmoxer", "requests")
                            if f"/{p}/" in name), "other")
                growth[pkg] = growth.get(pkg, 0.0) + stat.size_diff / 1024
            tracemalloc.stop()
        wall = time.perf_counter() - t0
    after_warmup = [mib for i, mib in points if i >= 100] or [points[-1][1]]
    return {"nodes": nodes, "guests": guests, "cycles": cycles,
            "rss_mib_every": every, "rss_mib": points,
            "growth_mib_after_100_cycles": round(after_warmup[-1] - after_warmup[0], 1),
            **({"allocation_growth_kib_by_package_after_100_cycles":
                {k: round(v, 1) for k, v in sorted(growth.items())}} if attribute else {}),
            "wall_seconds": round(wall, 1)}


def agent_floor(nodes: int, guests: int, cycles: int = 15,
                repetitions: int = 25) -> dict[str, Any]:
    """`decision_floor` after `cycles` agent cycles against the benchmark
    cluster (the simulator is deterministic: every run, whichever tree,
    gets the same body), and which `pve_balancer` it timed."""
    import pve_balancer
    from bench import harness
    from pve_balancer.config import Config
    from simlab.inprocess import InProcessLab, simulator

    with harness.quiet_agent_logs():
        sim = simulator(cluster(nodes, guests), seed=0)
        config = Config(dry_run=True, seed=1)
        agent = InProcessLab.attach(sim, config).agent
        body = [b""]
        real = sim.handle

        def keep(req: Any) -> Any:
            resp = real(req)
            if req.path.endswith("/cluster/resources"):
                body[0] = resp.body
            return resp

        sim.handle = keep  # type: ignore[method-assign]
        for _ in range(cycles):
            agent.run_cycle()
            sim.advance(config.interval)
        out = decision_floor(agent, body[0], config, sim.now, repetitions)
    out["code"] = str(Path(pve_balancer.__file__).resolve().parent.parent)
    return out


def alternate_floor(nodes: int, guests: int, trees: Sequence[Path], rounds: int,
                    repetitions: int) -> dict[str, Any]:
    """`agent_floor` with each tree in `trees` (a directory holding a
    `pve_balancer` package, e.g. an export of another commit) in turn,
    `rounds` times, each in a fresh process."""
    runs = [_child("--floor-one", nodes, guests, "--code", tree, "--repetitions", repetitions)
            for _ in range(rounds) for tree in trees]
    return {"nodes": nodes, "guests": guests, "runs": runs}


class _Replay:
    """An API handler that records the simulator's answers, then serves
    the recorded ones (keyed by method, path and parameters) instead of
    asking it: the agent's cycles run with everything it talks to frozen,
    so what grows is the agent's (and its client's)."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.answers: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
        self.replaying = False
        self.served = 0
        self.misses = 0

    def handle(self, request: Any) -> Any:
        key = (request.method, request.path, tuple(sorted(request.params.items())))
        if self.replaying:
            answer = self.answers.get(key)
            if answer is not None:
                self.served += 1
                return answer
            self.misses += 1
        answer = self.sim.handle(request)
        if not self.replaying:
            self.answers[key] = answer
        return answer


class _ReplayClock:
    """The simulator's clock during warm-up; afterwards time that only
    moves (no physics), as the recorded answers do not change."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.frozen: float | None = None

    def now(self) -> float:
        return float(self.sim.now) if self.frozen is None else self.frozen

    def sleep(self, seconds: float) -> None:
        if self.frozen is None:
            self.sim.advance(seconds)
        else:
            self.frozen += max(0.0, seconds)


def agent_rss(nodes: int, guests: int, cycles: int, every: int = 50,
              warmup: int = 30, attribute: bool = False) -> dict[str, Any]:
    """The agent alone over `cycles` full cycles (`Agent.run_cycle` with
    proxmoxer and requests, as in production) against recorded answers:
    `warmup` cycles against the simulator record every answer, then the
    simulator stands still and the recorded answers are served. The
    process's RSS every `every` cycles; with `attribute`, also the Python
    allocations (tracemalloc from cycle 100 on, which slows every cycle)
    and, at the end, which package's grew since cycle 150 (by then every
    allocation that lives for a cycle was made under tracing)."""
    from bench import harness
    from pve_balancer.agent import Agent
    from pve_balancer.config import Config, ConfigSource
    from pve_balancer.env import PveEnvironment
    from pve_balancer.leadership import AlwaysLeader
    from simlab.inprocess import attach_client, simulator

    with harness.quiet_agent_logs():
        sim = simulator(cluster(nodes, guests), seed=0)
        config = Config(dry_run=True, seed=1)
        replay = _Replay(sim)
        node = sim.node_names[0]
        client = attach_client(sim, node, handler=replay)
        clock = _ReplayClock(sim)
        env = PveEnvironment(node=node, connect=lambda: client, election=AlwaysLeader(),
                             clock=clock)
        agent = Agent(env, ConfigSource.fixed(config))
        for _ in range(warmup):
            agent.run_cycle()
            clock.sleep(config.interval)
        replay.replaying = True
        clock.frozen = float(sim.now)
        points: list[tuple[int, float]] = []
        traced: list[tuple[int, float]] = []
        by_package: dict[str, float] = {}
        first: Any = None
        sentences: set[str] = set()
        t0 = time.perf_counter()
        for i in range(1, cycles + 1):
            sentences.add(agent.run_cycle().sentence.split(":")[0][:60])
            clock.sleep(config.interval)
            if attribute and i == 100:
                tracemalloc.start()
            if attribute and i == 150:  # every per-cycle object has been replaced once
                first = tracemalloc.take_snapshot()
            if i % every == 0 or i in (1, cycles):
                points.append((i, round(_rss_bytes() / 2**20, 2)))
                if tracemalloc.is_tracing():
                    traced.append((i, round(tracemalloc.get_traced_memory()[0] / 1024, 1)))
        agent_lines: list[tuple[str, float]] = []
        if first is not None:
            last = tracemalloc.take_snapshot()
            for stat in last.compare_to(first, "filename"):
                name = str(stat.traceback[0].filename)
                pkg = next((p for p in ("pve_balancer", "proxmoxer", "requests", "urllib3")
                            if f"/{p}/" in name), "other")
                by_package[pkg] = by_package.get(pkg, 0.0) + stat.size_diff / 1024
            ours = [stat for stat in last.compare_to(first, "lineno")
                    if "/pve_balancer/" in str(stat.traceback[0].filename)]
            agent_lines = [(f"{Path(stat.traceback[0].filename).name}:{stat.traceback[0].lineno}",
                            round(stat.size_diff / 1024, 1))
                           for stat in sorted(ours, key=lambda x: -x.size_diff)[:8]]
            tracemalloc.stop()
        wall = time.perf_counter() - t0
    after = [mib for i, mib in points if i >= 100] or [points[-1][1]]
    return {"nodes": nodes, "guests": guests, "cycles": cycles, "warmup_cycles": warmup,
            "answers_recorded": len(replay.answers), "answers_not_recorded": replay.misses,
            "answers_replayed": replay.served,
            "sentences": sorted(sentences), "rss_mib_every": every, "rss_mib": points,
            "rss_growth_mib_after_100_cycles": round(after[-1] - after[0], 2),
            "traced_kib_from_cycle_100": traced,
            "allocation_growth_kib_by_package_after_150_cycles":
                {k: round(v, 1) for k, v in sorted(by_package.items())},
            "agent_lines_grown_kib_after_150_cycles": agent_lines,
            "wall_seconds": round(wall, 1)}


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


def _child(*args: object) -> dict[str, Any]:
    """One measurement in a fresh process (its RSS is its own)."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *map(str, args)],
                         check=True, capture_output=True, text=True, cwd=REPO)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def large_table(rows: Sequence[dict[str, Any]], rss: Sequence[dict[str, Any]]) -> str:
    """The floor, bytes and RSS figures of the large sizes."""
    lines = [
        "| nodes | guests | body KiB | json.loads ms | parse ms | EMA ms | decide ms | "
        "decision ms (x json.loads) | req/cycle | KiB/cycle | req/day | MiB/day | "
        "RSS MiB after 1 / 100 / last cycle |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        f = r.get("floor")
        if f is None:
            continue
        p = f["parts_ms"]
        curve = next((x for x in rss if x["nodes"] == r["nodes"]
                      and x["guests"] == r["guests"]), None)
        if curve is not None:
            pts = dict(curve["rss_mib"])
            mem = f"{pts[1]:.0f} / {pts.get(100, 0):.0f} / {curve['rss_mib'][-1][1]:.0f} " \
                  f"({curve['rss_mib'][-1][0]} cycles)"
        else:
            mem = "-"
        lines.append(
            f"| {r['nodes']} | {r['guests']} | {f['body_bytes'] / 1024:,.0f} "
            f"| {f['json_loads_ms']:.2f} | {p['parse']:.2f} | {p['ema']:.2f} "
            f"| {p['decide']:.2f} | {f['decision_ms']:.2f} ({f['ratio_to_json_loads']:.2f}) "
            f"| {r['api_requests_per_cycle']:.2f} | {r['api_bytes_per_cycle'] / 1024:,.0f} "
            f"| {r['api_requests_per_day']:,} | {r['api_mib_per_day']:,.0f} | {mem} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=60, help="measured cycles per size")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    ap.add_argument("--one", nargs=2, type=int, metavar=("NODES", "GUESTS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--rss", nargs=2, type=int, metavar=("NODES", "GUESTS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--rss-cycles", type=int, default=1000,
                    help="full cycles for the RSS curve at 64 nodes / 1,000 guests (0: skip)")
    ap.add_argument("--rss-cycles-10k", type=int, default=300,
                    help="the same at 10,000 guests, where the simulator's own physics "
                    "takes about 1 s per cycle (0: skip)")
    ap.add_argument("--no-large", action="store_true", help="skip the 64-node sizes")
    ap.add_argument("--agent-rss-one", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--attribute", action="store_true",
                    help="with --rss or --agent-rss: which package's allocations grew "
                    "(tracemalloc)")
    ap.add_argument("--floor", nargs=2, type=int, metavar=("NODES", "GUESTS"),
                    help="only the decision's floor, on a body served at that size, for this "
                    "tree and each --compare tree in turn (--rounds times); JSON to --out")
    ap.add_argument("--compare", type=Path, action="append", default=[], metavar="TREE",
                    help="with --floor: also a directory holding another pve_balancer "
                    "(e.g. `git archive COMMIT pve_balancer | tar -x -C TREE`)")
    ap.add_argument("--rounds", type=int, default=2, help="with --floor")
    ap.add_argument("--repetitions", type=int, default=25, help="floor repetitions per run")
    ap.add_argument("--floor-one", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--agent-rss", nargs=2, type=int, metavar=("NODES", "GUESTS"),
                    help="the agent alone against recorded answers for --rss-cycles cycles: "
                    "RSS and allocations every 50; JSON to --out")
    args = ap.parse_args(argv)
    if args.floor_one:
        if args.code:
            sys.path.insert(0, str(args.code.resolve()))
        print(json.dumps(agent_floor(args.floor_one[0], args.floor_one[1],
                                     repetitions=args.repetitions)))
        return 0
    if args.floor or args.agent_rss:
        t0 = time.perf_counter()
        if args.floor:
            result = alternate_floor(args.floor[0], args.floor[1], [REPO, *args.compare],
                                     args.rounds, args.repetitions)
            kind = "scale decision floor"
        else:
            result = _child("--agent-rss-one", args.agent_rss[0], args.agent_rss[1],
                            "--rss-cycles", args.rss_cycles,
                            *(["--attribute"] if args.attribute else []))
            kind = "scale agent RSS against recorded answers"
        doc = {"benchmark": kind,
               "command": "python bench/scale.py " + " ".join(
                   sys.argv[1:] if argv is None else argv),
               "python": platform.python_version(), "machine": platform.machine(),
               "timing": "process CPU time, medians", "result": result,
               "total_wall_seconds": round(time.perf_counter() - t0, 1)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0
    if args.agent_rss_one:
        print(json.dumps(agent_rss(args.agent_rss_one[0], args.agent_rss_one[1], args.rss_cycles,
                                   attribute=args.attribute)))
        return 0
    if args.cycles < 5:
        ap.error("--cycles must be at least 5")
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.cycles)))
        return 0
    if args.rss:
        print(json.dumps(rss_over_cycles(args.rss[0], args.rss[1], args.rss_cycles,
                                         attribute=args.attribute)))
        return 0
    t0 = time.perf_counter()
    rows = []
    sizes = [(n, g) for n in NODE_COUNTS for g in GUEST_COUNTS]
    if not args.no_large:
        sizes += list(LARGE)
    for n, g in sizes:
        print(f"{n} nodes, {g} guests ...", flush=True)
        rows.append(_child("--one", n, g, "--cycles", args.cycles))
    add_ratios(rows)
    rss = []
    for n, g in () if args.no_large else LARGE:
        count = args.rss_cycles if g < 10000 else args.rss_cycles_10k
        if count > 0:
            print(f"{n} nodes, {g} guests: RSS over {count} cycles ...", flush=True)
            rss.append(_child("--rss", n, g, "--rss-cycles", count))
    doc = {
        "benchmark": "scale",
        "command": "python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "total_wall_seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
        "rss_over_cycles": rss,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(table(rows))
    print()
    print(large_table(rows, rss))
    print(f"\ntotal wall {doc['total_wall_seconds']} s; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
