"""Quality benchmark: what the real agent changes on trace-driven clusters.

Each scenario runs twice in stepped virtual time with the same seed: once
with nobody acting (baseline) and once with the real agent (AlwaysLeader,
5 s interval, proxmoxer attached in-process; see bench/harness.py and
simlab/inprocess.py). The simulator's physics-side metrics (pvesim.metrics)
judge both runs; this module adds the figures that judge the seed's promise
of "the bare minimum of migrations": migrations a later migration undid, and
migrations per relieved threshold episode.

Workloads replay the Bitbrains traces: GWA-T-12 Bitbrains, Grid Workloads
Archive, TU Delft.

    .venv/bin/python bench/quality.py [--hours 24] [--seed 0] [--scenario NAME ...]
        [--out bench/results] [--no-plot]

Writes bench/results/quality.json (every figure of every run) and one PNG
per agent run (bench/results/quality-<scenario>.png; baselines with
--plot-baseline). Prints a Markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from pve_balancer.config import Config, parse_config  # noqa: E402

SCENARIOS = {
    "bitbrains-4node-120vm": REPO / "bench" / "scenarios" / "bitbrains-4node-120vm.yaml",
    "bitbrains-imbalanced": REPO / "bench" / "scenarios" / "bitbrains-imbalanced.yaml",
    "bitbrains-hotspot": REPO / "bench" / "scenarios" / "bitbrains-hotspot.yaml",
    "bitbrains-memheavy": REPO / "bench" / "scenarios" / "bitbrains-memheavy.yaml",
}

SUSTAINED = 60.0
"""Threshold episodes shorter than this are transient bursts: the seed's EMA
over one minute is designed not to react to them, so time-to-relief is also
reported for episodes of at least this length."""

RATIO_KEYS = (
    "cpu_starvation_core_seconds",
    "node_seconds_above_cpu_max",
    "node_seconds_above_memory_max",
    "peak_node_cpu",
    "peak_node_memory",
    "sustained_cpu_episode_seconds",
    "sustained_memory_episode_seconds",
)


def _ratio(a: float, b: float) -> float | None:
    """agent / baseline; None when the baseline is zero (no ratio exists)."""
    if b == 0:
        return None
    return round(a / b, 4)


def _episodes(sim: Any) -> list[tuple[str, str, float, float, bool]]:
    """(node, kind, start, end, closed) for every threshold episode; open
    ones end at the end of the run."""
    m = sim.metrics
    done = [(n, k, s, e, True) for (n, k, s, e) in m.episodes_done]
    still = [(n, k, s, m.now, False) for (n, k), s in m.open_episodes.items()]
    return done + still


def _relief(episodes: Sequence[tuple[str, str, float, float, bool]], kind: str,
            minimum: float) -> dict[str, Any]:
    d = sorted(e - s for (_, k, s, e, _) in episodes if k == kind and e - s >= minimum)
    if not d:
        return {"count": 0, "total_seconds": 0.0, "mean_seconds": 0.0, "median_seconds": 0.0,
                "max_seconds": 0.0}
    return {"count": len(d), "total_seconds": round(sum(d), 1),
            "mean_seconds": round(sum(d) / len(d), 1), "median_seconds": d[len(d) // 2],
            "max_seconds": d[-1]}


def migration_figures(migrations: Sequence[dict[str, Any]],
                      episodes: Sequence[tuple[str, str, float, float, bool]]) -> dict[str, Any]:
    """Figures on economy: undone moves and moves per relieved episode.

    `migrations` are pvesim's records (successful and failed, all users);
    an episode is (node, kind, start, end, closed).
    """
    ok = [m for m in migrations if m["ok"]]
    undone = 0
    undone_details = []
    for i, m in enumerate(ok):
        for later in ok[i + 1:]:
            if later["vmid"] != m["vmid"]:
                continue
            # the next move of the same guest: did it go back where it came from?
            if later["target"] == m["source"]:
                undone += 1
                undone_details.append({"vmid": m["vmid"], "away_seconds":
                                       round(later["end"] - m["end"], 1),
                                       "moved_at": m["start"], "undone_at": later["start"]})
            break
    in_episode: dict[int, int] = {}
    outside = 0
    for m in migrations:
        hit = None
        for idx, (node, _kind, s, e, _closed) in enumerate(episodes):
            if node == m["source"] and s <= m["start"] <= e:
                hit = idx
                break
        if hit is None:
            outside += 1
        else:
            in_episode[hit] = in_episode.get(hit, 0) + 1
    relieved = [i for i in in_episode if episodes[i][4]]
    per = (sum(in_episode[i] for i in relieved) / len(relieved)) if relieved else None
    return {
        "undone": undone,
        "undone_list": undone_details,
        "started_during_an_episode_on_source": sum(in_episode.values()),
        "started_outside_episodes": outside,
        "episodes_acted_on": len(in_episode),
        "episodes_acted_on_and_relieved": len(relieved),
        "migrations_per_relieved_episode": None if per is None else round(per, 3),
    }


CAUSE_WINDOW = 60.0
"""A migration starting this soon after the agent's accepted migrate POST
for the same guest is the agent's (HA guests move as root@pam's qmigrate a
few seconds after the agent's hamigrate request)."""


def split_by_agent(migrations: Sequence[dict[str, Any]],
                   request_log: Sequence[Any]) -> tuple[list[dict[str, Any]],
                                                        list[dict[str, Any]]]:
    """Migrations the agent caused, and the others (HA recovery, operators)."""
    posts: dict[int, list[float]] = {}
    for r in request_log:
        if r.method == "POST" and r.path.endswith("/migrate") and r.status == 200 \
                and r.token_id == harness.AGENT_TOKEN:
            posts.setdefault(int(r.path.split("/")[4]), []).append(r.time)
    mine: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for m in migrations:
        caused = any(0 <= m["start"] - t <= CAUSE_WINDOW for t in posts.get(m["vmid"], ()))
        (mine if caused else others).append(m)
    return mine, others


def _mode_of(migration: dict[str, Any], started: Sequence[dict[str, object]]) -> str:
    """The policy mode of the agent decision that caused `migration`."""
    best = "unknown"
    for f in started:
        t = float(str(f.get("time", "nan")))
        if f.get("vmid") == migration["vmid"] and 0 <= migration["start"] - t <= CAUSE_WINDOW:
            best = str(f.get("mode"))
    return best


def summarize(result: harness.RunResult) -> dict[str, Any]:
    m = result.metrics
    sim = result.sim
    episodes = _episodes(sim)
    mig = m["migrations"]
    agent_moves, other_moves = split_by_agent(mig["list"], sim.request_log)
    out: dict[str, Any] = {
        "with_agent": result.with_agent,
        "simulated_seconds": m["simulated_seconds"],
        "cpu_starvation_core_seconds": m["cpu_starvation_core_seconds"],
        "node_seconds_above_cpu_max": m["node_seconds_above_cpu_max"],
        "node_seconds_above_memory_max": m["node_seconds_above_memory_max"],
        "peak_node_cpu": m["peak_node_cpu"],
        "peak_node_memory": m["peak_node_memory"],
        "memory_overcommit_byte_seconds": m["memory_overcommit_byte_seconds"],
        "migrations": {k: mig[k] for k in
                       ("count", "failed", "started", "bytes", "seconds", "ping_pongs")},
        "migrations_by_agent": len(agent_moves),
        "migrations_by_others": len(other_moves),
        "threshold_episodes": m["threshold_episodes"],
        "sustained_episodes": {
            kind: _relief(episodes, kind, SUSTAINED) for kind in ("cpu", "memory")},
        "economy": migration_figures(agent_moves, episodes),
        "agent_moves_by_mode": _count([_mode_of(x, result.started) for x in agent_moves]),
        "nodes": m["nodes"],
        "api_requests_total": m["api_requests"]["total"],
        "wall_seconds": round(result.wall_seconds, 2),
        "cpu_seconds": round(result.cpu_seconds, 2),
    }
    for undone in out["economy"]["undone_list"]:
        moved = {"vmid": undone["vmid"], "start": undone["moved_at"]}
        back = {"vmid": undone["vmid"], "start": undone["undone_at"]}
        undone["modes"] = f"{_mode_of(moved, result.started)} then {_mode_of(back, result.started)}"
    out["economy"]["undone_by_modes"] = _count(
        [u["modes"] for u in out["economy"]["undone_list"]])
    out["sustained_cpu_episode_seconds"] = out["sustained_episodes"]["cpu"]["total_seconds"]
    out["sustained_memory_episode_seconds"] = out["sustained_episodes"]["memory"]["total_seconds"]
    if result.with_agent:
        out["agent"] = {
            "cycles": result.cycles,
            "overruns": result.overruns,
            "api_requests": result.agent_requests,
            "api_requests_per_cycle": round(result.agent_requests / max(1, result.cycles), 3),
            "migrations_started_by_mode": _count([str(f.get("mode")) for f in result.started]),
            "wall_ms_per_cycle": round(1000 * result.wall_seconds / max(1, result.cycles), 3),
            "sentence_kinds": _count([_kind(s) for _, s in result.sentences]),
            "decisions_started": [
                {"t_hours": round((float(str(f["time"])) - sim.metrics.start) / 3600, 3),
                 "sentence": f["sentence"]}
                for f in result.started
            ][:MAX_LISTED],
        }
    return out


MAX_LISTED = 200


def _kind(sentence: str) -> str:
    """A journal sentence's wording class (first words, no numbers)."""
    words = [w for w in sentence.split()[:3] if not any(c.isdigit() for c in w)]
    return " ".join(words[:2])


def _count(items: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def code_state() -> dict[str, Any]:
    """The commit the agent and simulator came from, and whether their files
    differed from it when the run started (the tree may be shared)."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                 timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.rstrip()  # not strip(): a status line starts with a space

    dirty = git("status", "--porcelain", "--", "pve_balancer", "pvesim")
    return {"commit": git("rev-parse", "HEAD") or None,
            "agent_or_simulator_modified": [line[3:] for line in dirty.splitlines()]}


def shrink_png(path: Path) -> None:
    """Re-encode a plot with a 32-colour palette (about a quarter of the
    size; line plots lose nothing visible) so committed results stay small."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=32)
    small.save(path, optimize=True)


def agent_config(settings: Sequence[str], seed: int) -> Config:
    """The agent's configuration: defaults, with `KEY=VALUE` settings read
    the way balancer.yaml is read (same keys, types and clamping), and the
    run's seed for the agent's random choices unless `seed` is set."""
    text = "".join(f"{k.strip()}: {v.strip()}\n" for k, _, v in
                   (item.partition("=") for item in settings))
    result = parse_config(text, "--set")
    if result.config is None or result.problems:
        problems = "; ".join(str(p) for p in result.problems) or "invalid"
        raise SystemExit(f"quality.py: bad --set: {problems}")
    config = result.config
    if config.seed is None:
        config = dataclasses.replace(config, seed=seed)
    return config


def run_scenario(name: str, path: Path, *, seed: int, hours: float, out: Path,
                 plot: bool, plot_baseline: bool, config: Config | None = None,
                 tag: str = "") -> dict[str, Any]:
    duration = hours * 3600
    print(f"{name}: baseline ...", flush=True)
    base = harness.run(path, seed=seed, duration=duration, with_agent=False)
    print(f"{name}: baseline {base.wall_seconds:.1f} s wall; with the agent ...", flush=True)
    config = config or agent_config((), seed)
    agent = harness.run(path, seed=seed, duration=duration, with_agent=True, config=config,
                        progress=lambda s: print(s, flush=True) if hours > 2 else None)
    print(f"{name}: agent run {agent.wall_seconds:.1f} s wall", flush=True)
    b, a = summarize(base), summarize(agent)
    ratios = {k: _ratio(float(a[k]), float(b[k])) for k in RATIO_KEYS}
    if plot:
        from pvesim.plot import write_png

        write_png(agent.sim, out / f"quality-{name}{tag}.png")
        shrink_png(out / f"quality-{name}{tag}.png")
        if plot_baseline:
            write_png(base.sim, out / f"quality-{name}-baseline.png")
            shrink_png(out / f"quality-{name}-baseline.png")
    return {"scenario": name, "file": str(path.relative_to(REPO)), "seed": seed,
            "hours": hours, "agent_config": {
                k: sorted(v) if isinstance(v, frozenset) else v
                for k, v in dataclasses.asdict(config).items()},
            "baseline": b, "agent": a, "ratio_agent_to_baseline": ratios}


def _f(x: Any, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


PHYSICS_FIGURES = (
    ("CPU starvation (core-s)", "cpu_starvation_core_seconds", 0),
    ("node-s above cpu_max", "node_seconds_above_cpu_max", 0),
    ("node-s above memory_max", "node_seconds_above_memory_max", 0),
    ("sustained (>= 60 s) CPU episodes, total s", "sustained_cpu_episode_seconds", 0),
    ("peak node CPU", "peak_node_cpu", 3),
    ("peak node memory", "peak_node_memory", 3),
)
"""The figures measured on the cluster itself (label, key, digits), for
every run with or without a balancer; the tables of `bench/run` use them."""


def table(results: Sequence[dict[str, Any]]) -> str:
    rows = PHYSICS_FIGURES
    head = "| figure | " + " | ".join(
        f"{r['scenario']} baseline | agent | ratio" for r in results) + " |"
    sep = "|---|" + "---|---|---|" * len(results)
    lines = [head, sep]
    for label, key, digits in rows:
        cells = []
        for r in results:
            cells += [_f(r["baseline"][key], digits), _f(r["agent"][key], digits),
                      _f(r["ratio_agent_to_baseline"].get(key), 3)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def agent_row(label: str, get: Any) -> None:
        cells = []
        for r in results:
            cells += ["", _f(get(r["agent"])), ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    agent_row("migrations ok / failed",
              lambda a: f"{a['migrations']['count']} / {a['migrations']['failed']}")
    agent_row("  of which by the agent", lambda a: a["migrations_by_agent"])
    agent_row("migrated GiB / migration s",
              lambda a: f"{a['migrations']['bytes'] / 2**30:.1f} / "
                        f"{a['migrations']['seconds']:.0f}")
    agent_row("ping-pongs (back within 1 h) / undone (ever)",
              lambda a: f"{a['migrations']['ping_pongs']} / {a['economy']['undone']}")
    agent_row("migrations per relieved episode",
              lambda a: _f(a["economy"]["migrations_per_relieved_episode"], 2))
    agent_row("agent moves outside any episode",
              lambda a: a["economy"]["started_outside_episodes"])
    agent_row("sustained CPU episodes: count, mean / max s",
              lambda a: f"{a['sustained_episodes']['cpu']['count']}, "
                        f"{a['sustained_episodes']['cpu']['mean_seconds']:.0f} / "
                        f"{a['sustained_episodes']['cpu']['max_seconds']:.0f}")
    agent_row("API requests per cycle", lambda a: _f(a["agent"]["api_requests_per_cycle"], 2))
    cells = []
    for r in results:
        cells += [f"{r['baseline']['wall_seconds']:.0f}", f"{r['agent']['wall_seconds']:.0f}", ""]
    lines.append("| wall s of the run | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="run only this scenario (repeatable); default: all")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--json-name", default="quality.json")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--plot-baseline", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="agent configuration key as in balancer.yaml (repeatable)")
    ap.add_argument("--tag", default="", help="suffix for PNG names (variants)")
    args = ap.parse_args(argv)
    if args.hours <= 0:
        ap.error("--hours must be positive")
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.scenario or list(SCENARIOS)
    code = code_state()
    if code["agent_or_simulator_modified"]:
        print(f"warning: uncommitted changes in {code['agent_or_simulator_modified']}",
              file=sys.stderr)
    t0 = time.perf_counter()
    config = agent_config(args.set, args.seed)
    results = [run_scenario(n, SCENARIOS[n], seed=args.seed, hours=args.hours, out=args.out,
                            plot=not args.no_plot, plot_baseline=args.plot_baseline,
                            config=config, tag=args.tag)
               for n in names]
    doc = {
        "benchmark": "quality",
        "command": "python bench/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "traces": "GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "code": code,
        "total_wall_seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    (args.out / args.json_name).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print()
    print(table(results))
    print(f"\ntotal wall {doc['total_wall_seconds']} s; written {args.out / args.json_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
