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
        [--balancer NAME ...] [--json-name NAME.json] [--no-plot]

Needs dev/peers-venv once (ProxLB's pinned virtualenv and libfaketime).

Results are kept per scenario, per balancer: each run is merged into
bench/results/peers-<scenario>.json (its figures, the commit that produced
them and a compact time series), replacing only the balancers it ran, so a
balancer can be rerun (e.g. pve-balancer after a policy change) without
rerunning the others; the panel PNG peers-<scenario>.png (one row per
balancer, bench/panels.py) is redrawn from that file. `--json-name` also
writes the run's figures, without the series, into one file. Prints one
Markdown table per scenario (the ones in docs/benchmarks.md). The three-day
scenario runs for 3 x `--hours`. GWA-T-12 Bitbrains, Grid Workloads Archive,
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

from bench import bound, harness, panels  # noqa: E402
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

BALANCERS = ("none", "pve-balancer", "pve-auto-rebalance", "pve-auto-rebalance-dynamic",
             *SETTINGS)
LABELS = {
    "none": "no balancer",
    "pve-balancer": "pve-balancer (defaults)",
    "pve-auto-rebalance": "PVE ha-auto-rebalance, static load (pvesim's model)",
    "pve-auto-rebalance-dynamic": "PVE ha-auto-rebalance, dynamic load (pvesim's model)",
    "proxlb-memory-12h": "ProxLB memory, 12 h (defaults)",
    "proxlb-cpu-12h": "ProxLB cpu, 12 h",
    "proxlb-memory-1h": "ProxLB memory, 1 h",
}


ALL_HA = {"bitbrains-imbalanced-ha": REPO / "bench" / "scenarios" / "bitbrains-imbalanced-ha.yaml"}
"""Scenarios where every guest is HA-managed: PVE's own CRS auto-rebalance
can act there, so it is compared too (and only there)."""
SCENARIO_DIR = REPO / "bench" / "scenarios"
PEER_SCENARIOS = {
    **SCENARIOS,
    **ALL_HA,
    "bitbrains-affinity-8node": SCENARIO_DIR / "bitbrains-affinity-8node.yaml",
    "bitbrains-imbalanced-3day": SCENARIO_DIR / "bitbrains-imbalanced-3day.yaml",
}
DAYS = {"bitbrains-imbalanced-3day": 3}
"""Scenarios longer than `--hours`: run for this many times `--hours`."""
EXCLUDE_TAG = "pve-balancer-exclude"
TRANSIENT = 60.0
DEFAULT_BALANCERS = ("none", "pve-balancer", *SETTINGS)
ALL_HA_BALANCERS = ("none", "pve-balancer", "pve-auto-rebalance", "pve-auto-rebalance-dynamic",
                    "proxlb-memory-12h")


def with_auto_rebalance(path: Path, load: str | None = None) -> Scenario:
    """The scenario with PVE's CRS auto-rebalance of HA guests on, at PVE's
    defaults (threshold, hold duration and margin left unset); `load`
    ("static" or "dynamic") replaces the scenario's CRS `ha` mode: static
    weighs guests by their configured size, dynamic by what they use."""
    scenario = scenario_of(path)
    crs = dict(scenario.options.get("crs") or {})
    crs["ha-auto-rebalance"] = 1
    if load is not None:
        crs["ha"] = load
    scenario.options = {**scenario.options, "crs": crs}
    return scenario


def _violations(placement: dict[int, str], sim: Simulator) -> set[tuple[str, str]]:
    """(rule, kind) of every HA rule the placement breaks: a guest of a
    strict node-affinity rule outside its nodes ("outside"), one of a
    preferring rule off its highest-priority nodes ("not preferred"), a
    positive pair apart ("apart"), two of a negative group together
    ("together"). Rules bind HA-managed guests only, as in PVE."""
    ha = {g.vmid for g in sim.scenario.guests if g.ha}
    out: set[tuple[str, str]] = set()
    for r in sim.scenario.rules:
        if r.disable:
            continue
        vmids = [int(sid.split(":")[1]) for sid in r.resources]
        vmids = [v for v in vmids if v in ha and v in placement]
        if r.type == "node-affinity":
            prio = {n.split(":")[0]: int(n.split(":")[1]) if ":" in n else 0 for n in r.nodes}
            best = {n for n, p in prio.items() if p == max(prio.values())}
            for v in vmids:
                if r.strict and placement[v] not in prio:
                    out.add((r.rule, "outside"))
                elif not r.strict and placement[v] not in best:
                    out.add((r.rule, "not preferred"))
        elif r.affinity == "positive" and len({placement[v] for v in vmids}) > 1:
            out.add((r.rule, "apart"))
        elif r.affinity == "negative" and len({placement[v] for v in vmids}) < len(vmids):
            out.add((r.rule, "together"))
    return out


def rule_figures(sim: Simulator, token: str | None) -> dict[str, Any]:
    """What a balancer did to the scenario's constraints: its migration
    requests the simulator refused (PVE's refusals: local devices, strict
    node-affinity, negative resource-affinity), the moves of guests with a
    local device or the exclude tag (the latter binds pve-balancer only;
    other balancers have their own tags), and, replaying every completed
    migration in order from the scenario's placement, the moves after which
    an HA rule was broken that was kept before, and the seconds each kind
    of breach lasted. A breach shorter than TRANSIENT (a positive pair
    apart while the HA stack moves the partner along) is not counted as a
    breaking move."""
    guests = sim.scenario.guests
    pinned = {g.vmid for g in guests if g.local_resources}
    excluded = {g.vmid for g in guests if EXCLUDE_TAG in g.tags}
    moves = sorted((r for r in sim.metrics.migrations if r.ok), key=lambda r: r.end)
    placement = {g.vmid: g.node for g in guests}
    broken = _violations(placement, sim)
    since = {v: sim.metrics.start for v in broken}
    seconds: dict[str, float] = {}
    opened: dict[tuple[str, str], dict[str, Any]] = {}
    breaking: list[dict[str, Any]] = []

    def close(v: tuple[str, str], t: float) -> None:
        key = f"{v[0]} ({v[1]})"
        lasted = t - since.pop(v)
        seconds[key] = seconds.get(key, 0.0) + lasted
        move = opened.pop(v, None)
        if move is not None and lasted >= TRANSIENT:
            breaking.append({**move, "seconds": round(lasted)})

    for r in moves:
        placement[r.vmid] = r.target
        now = _violations(placement, sim)
        for v in broken - now:
            close(v, r.end)
        for v in now - broken:
            since[v] = r.end
            opened[v] = {"vmid": r.vmid, "target": r.target, "rule": v[0], "kind": v[1],
                         "hours": round((r.end - sim.metrics.start) / 3600, 3)}
        broken = now
    for v in list(since):
        close(v, sim.now)
    refused = [r for r in sim.request_log
               if token is not None and r.token_id == token and r.method == "POST"
               and r.path.endswith("/migrate") and r.status != 200]
    return {
        "migration_requests_refused": len(refused),
        "refused_vmids": sorted({int(r.path.split("/")[-2]) for r in refused}),
        "moves_of_pinned": sum(1 for r in moves if r.vmid in pinned),
        "moves_of_excluded": sum(1 for r in moves if r.vmid in excluded),
        "moves_breaking_a_rule": len(breaking),
        "breaking_moves": sorted(breaking, key=lambda b: b["hours"])[:20],
        "seconds_rule_broken": {k: round(v) for k, v in sorted(seconds.items())},
    }


def _constrained(sim: Simulator) -> bool:
    return bool(sim.scenario.rules) or any(
        g.local_resources or EXCLUDE_TAG in g.tags for g in sim.scenario.guests)


def figures(sim: Simulator, *, token: str | None, wall_seconds: float) -> dict[str, Any]:
    """The figures every balancer is judged by, from the physics; moves are
    all migrations of the run (nobody else acts in these scenarios, but the
    HA stack, which carries out HA guests' migrations and fails back).
    With `series`, for the panels; with `rules` where the scenario has HA
    rules, pinned or excluded guests."""
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
        **({"rules": rule_figures(sim, token)} if _constrained(sim) else {}),
        "series": panels.series(sim),
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
    code = code_state()
    results: dict[str, Any] = {}
    for b in balancers:
        print(f"{name}: {b} ...", flush=True)
        if b == "none":
            r = harness.run(path, seed=seed, duration=duration, with_agent=False)
            results[b] = figures(r.sim, token=None, wall_seconds=r.wall_seconds)
        elif b in ("pve-auto-rebalance", "pve-auto-rebalance-dynamic"):
            load = "dynamic" if b.endswith("-dynamic") else None
            r = harness.run(with_auto_rebalance(path, load), seed=seed, duration=duration,
                            with_agent=False)
            results[b] = figures(r.sim, token=None, wall_seconds=r.wall_seconds)
        elif b == "pve-balancer":
            r = harness.run(path, seed=seed, duration=duration, with_agent=True,
                            config=agent_config((), seed))
            results[b] = figures(r.sim, token=harness.AGENT_TOKEN, wall_seconds=r.wall_seconds)
        else:
            results[b] = run_proxlb(path, b, seed=seed, duration=duration)
        results[b]["code"] = code
        print(f"{name}: {b}: {results[b]['migrations']} migrations, "
              f"{results[b]['wall_seconds']} s wall", flush=True)
    return {"scenario": name, "file": str(path.relative_to(REPO)), "seed": seed,
            "hours": hours, "balancers": results}


def scenario_file(out: Path, name: str) -> Path:
    return out / f"peers-{name}.json"


def panel_file(out: Path, name: str) -> Path:
    return out / f"peers-{name}.png"


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s balancers over `old`'s: the ones `new` ran replace theirs,
    the others stay, in BALANCERS order; so does `old`'s bound when `new`
    has none (it depends on the scenario, seed and length only). `old` is
    dropped whole when it is another run (other scenario file, seed or
    length): its figures would not be comparable."""
    same = old is not None and all(old.get(k) == new[k]
                                   for k in ("scenario", "file", "seed", "hours"))
    keep: dict[str, Any] = dict(old["balancers"]) if same and old is not None else {}
    keep.update(new["balancers"])
    order = {b: i for i, b in enumerate(BALANCERS)}
    balancers = dict(sorted(keep.items(), key=lambda kv: order.get(kv[0], len(order))))
    out = {**new, "balancers": balancers}
    if out.get("bound") is None and same and old is not None and old.get("bound") is not None:
        out["bound"] = old["bound"]
    return out


def record(result: dict[str, Any], out: Path, *, plot: bool = True) -> dict[str, Any]:
    """Merge `result` into the scenario's file under `out` and redraw its
    panels; returns the merged result."""
    path = scenario_file(out, result["scenario"])
    old = json.loads(path.read_text()) if path.exists() else None
    merged = merge(old, result)
    path.write_text(json.dumps({"benchmark": "peers", "proxlb": PROXLB_VERSION,
                                "traces": "GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft",
                                **merged}, indent=None, separators=(",", ":")) + "\n")
    if plot:
        draw(merged, out)
    return merged


def draw(result: dict[str, Any], out: Path) -> Path:
    """The scenario's panels from its (merged) result: peers-<scenario>.png."""
    png = panel_file(out, result["scenario"])
    panels.write_png(png, f"{result['scenario']}: node CPU and memory per balancer "
                          f"(seed {result['seed']}, {result['hours']:g} h simulated)",
                     result["balancers"], LABELS)
    panels.shrink(png)
    return png


def without_series(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "balancers": {b: {k: v for k, v in f.items() if k != "series"}
                                    for b, f in result["balancers"].items()}}


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
    """Markdown: one row per figure, one column per balancer; with the
    scenario's bound (bench/bound.py) when the result has one, as its own
    column and as each covered figure's ratio to it (none where it is 0)."""
    cols = list(result["balancers"])
    limit = result.get("bound")
    head = ["figure", *(["bound"] if limit else []), *(LABELS.get(c, c) for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for label, key, digits in ROWS:
        bkey = "migrations" if key is None else key
        lim = float(limit[bkey]) if limit and bkey in bound.BOUND_KEYS else None
        cells = [] if not limit else ["-" if lim is None else _cell(lim, digits)]
        for c in cols:
            f = result["balancers"][c]
            if key is None:
                text = f"{f['migrations']:,} ({f['migrations_failed']})"
                value = float(f["migrations"])
            else:
                text, value = _cell(f[key], digits), float(f[key])
            if lim:
                text += f" ({value / lim:.2f}x)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


RULE_ROWS = (
    ("migration requests refused", "migration_requests_refused"),
    ("moves of guests with a local device", "moves_of_pinned"),
    ("moves of guests tagged pve-balancer-exclude", "moves_of_excluded"),
    ("moves that broke an HA rule", "moves_breaking_a_rule"),
)


def rules_table(ruled: dict[str, dict[str, Any]]) -> str:
    """Markdown: per balancer, what it did to the scenario's constraints."""
    cols = list(ruled)
    lines = ["| constraint | " + " | ".join(LABELS.get(c, c) for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label, key in RULE_ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{ruled[c][key]:,}" for c in cols) + " |")
    kinds = sorted({k for c in cols for k in ruled[c]["seconds_rule_broken"]})
    for k in kinds:
        lines.append(f"| seconds {k} broken | " + " | ".join(
            f"{ruled[c]['seconds_rule_broken'].get(k, 0):,}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", choices=sorted(PEER_SCENARIOS))
    ap.add_argument("--balancer", action="append", choices=BALANCERS)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--json-name", default=None,
                    help="also write this run's figures (no series) into one file")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--bound", action="store_true",
                    help="also compute the scenario's bound (bench/bound.py) into its file")
    ap.add_argument("--replot", action="store_true",
                    help="run nothing: redraw the panels from the scenarios' results files")
    args = ap.parse_args(argv)
    names = args.scenario or list(PEER_SCENARIOS)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        for n in names:
            path = scenario_file(args.out, n)
            if path.exists():
                print(f"written {draw(json.loads(path.read_text()), args.out)}")
        return 0
    t0 = time.perf_counter()
    code = code_state()
    results, merged = [], []
    for n in names:
        r = run_scenario(n, seed=args.seed, hours=args.hours * DAYS.get(n, 1),
                         balancers=args.balancer or (
                             ALL_HA_BALANCERS if n in ALL_HA else DEFAULT_BALANCERS))
        if args.bound:
            print(f"{n}: bound ...", flush=True)
            r["bound"] = bound.bound(PEER_SCENARIOS[n], seed=args.seed,
                                     duration=r["hours"] * 3600).to_dict()
        results.append(without_series(r))
        merged.append(without_series(record(r, args.out, plot=not args.no_plot)))
        print(f"written {scenario_file(args.out, n)}", flush=True)
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
    if args.json_name:
        (args.out / args.json_name).parent.mkdir(parents=True, exist_ok=True)
        (args.out / args.json_name).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"written {args.out / args.json_name}")
    for r in merged:
        print(f"\n**{r['scenario']}** (seed {r['seed']}, {r['hours']:g} h; "
              f"every balancer in {scenario_file(args.out, r['scenario']).name})\n")
        print(table(r))
        ruled = {b: f["rules"] for b, f in r["balancers"].items() if "rules" in f}
        if ruled:
            print()
            print(rules_table(ruled))
    print(f"\ntotal wall {doc['total_wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
