"""Quality benchmark with the peers: the same scenario, the same seed, one
run per balancer, judged by the same physics-side metrics.

Balancers compared, per scenario:
- no balancer (the stepped baseline of bench/harness.py);
- pve-balancer at its defaults (bench/harness.py's agent run);
- ProxLB 2.3.0, unmodified, as a separate process against the simulator's
  HTTPS API (bench/proxlb_run.py): at its defaults (memory method, every
  12 h), with the cpu method, and every hour;
- on the scenario where every guest is HA-managed, PVE's own CRS
  `ha-auto-rebalance` (the simulator's model of it; pve-balancer and ProxLB
  run there with it off).

    .venv/bin/python bench/peers.py [--hours 24] [--seed 0] [--scenario NAME ...]
        [--balancer NAME ...] [--json-name peers.json]

Needs dev/peers-venv once (ProxLB's pinned virtualenv and libfaketime).
Writes bench/results/<json-name> and prints one Markdown table per scenario
(the ones in docs/benchmarks.md). GWA-T-12 Bitbrains, Grid Workloads Archive,
TU Delft.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from bench.proxlb_run import (  # noqa: E402
    PROXLB_TOKEN,
    PROXLB_VERSION,
    SETTINGS,
    run_schedule,
    with_proxlb_token,
)
from bench.quality import (  # noqa: E402
    SCENARIOS,
    SUSTAINED,
    _episodes,
    _relief,
    agent_config,
    code_state,
    migration_figures,
)
from pvesim.cluster import Simulator  # noqa: E402
from pvesim.scenario import Scenario  # noqa: E402
from simlab.inprocess import WARMUP, scenario_of  # noqa: E402

BALANCERS = ("none", "pve-balancer", "pve-auto-rebalance", *SETTINGS)
LABELS = {
    "none": "no balancer",
    "pve-balancer": "pve-balancer (defaults)",
    "pve-auto-rebalance": "PVE ha-auto-rebalance (pvesim's model)",
    "proxlb-memory-12h": "ProxLB memory, 12 h (defaults)",
    "proxlb-cpu-12h": "ProxLB cpu, 12 h",
    "proxlb-memory-1h": "ProxLB memory, 1 h",
}


ALL_HA = {"bitbrains-imbalanced-ha": REPO / "bench" / "scenarios" / "bitbrains-imbalanced-ha.yaml"}
"""Scenarios where every guest is HA-managed: PVE's own CRS auto-rebalance
can act there, so it is compared too (and only there)."""
PEER_SCENARIOS = {**SCENARIOS, **ALL_HA}
DEFAULT_BALANCERS = ("none", "pve-balancer", *SETTINGS)
ALL_HA_BALANCERS = ("none", "pve-balancer", "pve-auto-rebalance", "proxlb-memory-12h")


def with_auto_rebalance(path: Path) -> Scenario:
    """The scenario with PVE's CRS auto-rebalance of HA guests on, at PVE's
    defaults (threshold, hold duration and margin left unset)."""
    scenario = scenario_of(path)
    crs = dict(scenario.options.get("crs") or {})
    crs["ha-auto-rebalance"] = 1
    scenario.options = {**scenario.options, "crs": crs}
    return scenario


def figures(sim: Simulator, *, token: str | None, wall_seconds: float) -> dict[str, Any]:
    """The figures every balancer is judged by, from the physics; moves are
    all migrations of the run (nobody else acts in these scenarios)."""
    m = sim.metrics.to_dict()
    mig = m["migrations"]
    episodes = _episodes(sim)
    economy = migration_figures(mig["list"], episodes)
    requests = [r for r in sim.request_log if token is not None and r.token_id == token]
    days = max(m["simulated_seconds"], 1.0) / 86400
    return {
        "cpu_starvation_core_seconds": m["cpu_starvation_core_seconds"],
        "node_seconds_above_cpu_max": m["node_seconds_above_cpu_max"],
        "node_seconds_above_memory_max": m["node_seconds_above_memory_max"],
        "sustained_cpu_episode_seconds": _relief(episodes, "cpu", SUSTAINED)["total_seconds"],
        "peak_node_cpu": m["peak_node_cpu"],
        "peak_node_memory": m["peak_node_memory"],
        "migrations": mig["count"],
        "migrations_failed": mig["failed"],
        "migrated_gib": round(mig["bytes"] / 2**30, 1),
        "ping_pongs": mig["ping_pongs"],
        "undone": economy["undone"],
        "api_requests_per_day": round(len(requests) / days),
        "simulated_seconds": m["simulated_seconds"],
        "wall_seconds": round(wall_seconds, 1),
    }


def run_proxlb(path: Path, name: str, *, seed: int, duration: float) -> dict[str, Any]:
    """One ProxLB setting on the scenario, built exactly as the baseline."""
    sim = Simulator(with_proxlb_token(scenario_of(path)), seed=seed)
    sim.advance(WARMUP)
    w0 = time.perf_counter()
    runs = run_schedule(sim, SETTINGS[name], duration=duration,
                        progress=lambda s: print(s, flush=True))
    out = figures(sim, token=PROXLB_TOKEN, wall_seconds=time.perf_counter() - w0)
    out["proxlb_runs"] = [
        {"start_hours": round((r.start - sim.metrics.start - WARMUP) / 3600, 3),
         "simulated_seconds": round(r.end - r.start, 1), "exit": r.returncode,
         "migrate_posts": r.migrate_posts, "requests": r.requests,
         "wall_seconds": r.wall_seconds, "error_lines": r.errors[:5]}
        for r in runs]
    out["proxlb_errors"] = sum(len(r.errors) for r in runs) + sum(
        1 for r in runs if r.returncode != 0)
    return out


def run_scenario(name: str, *, seed: int, hours: float,
                 balancers: Sequence[str], path: Path | None = None) -> dict[str, Any]:
    """Every balancer of `balancers` on the scenario `name` (its file:
    `path`, by default the one of that name in PEER_SCENARIOS)."""
    path = path or PEER_SCENARIOS[name]
    duration = hours * 3600
    results: dict[str, Any] = {}
    for b in balancers:
        print(f"{name}: {b} ...", flush=True)
        if b == "none":
            r = harness.run(path, seed=seed, duration=duration, with_agent=False)
            results[b] = figures(r.sim, token=None, wall_seconds=r.wall_seconds)
        elif b == "pve-auto-rebalance":
            r = harness.run(with_auto_rebalance(path), seed=seed, duration=duration,
                            with_agent=False)
            results[b] = figures(r.sim, token=None, wall_seconds=r.wall_seconds)
        elif b == "pve-balancer":
            r = harness.run(path, seed=seed, duration=duration, with_agent=True,
                            config=agent_config((), seed))
            results[b] = figures(r.sim, token=harness.AGENT_TOKEN, wall_seconds=r.wall_seconds)
        else:
            results[b] = run_proxlb(path, b, seed=seed, duration=duration)
        print(f"{name}: {b}: {results[b]['migrations']} migrations, "
              f"{results[b]['wall_seconds']} s wall", flush=True)
    return {"scenario": name, "file": str(path.relative_to(REPO)), "seed": seed,
            "hours": hours, "balancers": results}


ROWS = (
    ("CPU starvation (core-s)", "cpu_starvation_core_seconds", 0),
    ("node-s above cpu_max (0.8)", "node_seconds_above_cpu_max", 0),
    ("node-s above memory_max (0.8)", "node_seconds_above_memory_max", 0),
    ("sustained (>= 60 s) CPU episodes, total s", "sustained_cpu_episode_seconds", 0),
    ("peak node CPU", "peak_node_cpu", 3),
    ("peak node memory", "peak_node_memory", 3),
    ("migrations (failed)", None, 0),
    ("migrated GiB", "migrated_gib", 1),
    ("ping-pongs (back within 1 h)", "ping_pongs", 0),
    ("undone (ever)", "undone", 0),
    ("API requests per day", "api_requests_per_day", 0),
)


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(result: dict[str, Any]) -> str:
    cols = list(result["balancers"])
    lines = ["| figure | " + " | ".join(LABELS.get(c, c) for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label, key, digits in ROWS:
        cells = []
        for c in cols:
            f = result["balancers"][c]
            if key is None:
                cells.append(f"{f['migrations']:,} ({f['migrations_failed']})")
            else:
                cells.append(_cell(f[key], digits))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", choices=sorted(PEER_SCENARIOS))
    ap.add_argument("--balancer", action="append", choices=BALANCERS)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--json-name", default="peers.json")
    args = ap.parse_args(argv)
    names = args.scenario or list(PEER_SCENARIOS)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    code = code_state()
    results = [run_scenario(n, seed=args.seed, hours=args.hours, balancers=args.balancer or (
        ALL_HA_BALANCERS if n in ALL_HA else DEFAULT_BALANCERS)) for n in names]
    doc = {
        "benchmark": "peers",
        "command": "python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "traces": "GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft",
        "proxlb": PROXLB_VERSION,
        "python": platform.python_version(),
        "code": code,
        "total_wall_seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    (args.out / args.json_name).parent.mkdir(parents=True, exist_ok=True)
    (args.out / args.json_name).write_text(json.dumps(doc, indent=1) + "\n")
    for r in results:
        print(f"\n**{r['scenario']}** (seed {r['seed']}, {r['hours']:g} h)\n")
        print(table(r))
    print(f"\ntotal wall {doc['total_wall_seconds']} s; written {args.out / args.json_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
