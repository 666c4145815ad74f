"""The limit: figures no balancer can beat on a scenario, and how far a run is from them.

A balancer changes only where guests run. It cannot change what they ask
for, how many cores and bytes the cluster has, or when nodes are powered.
So for each physics step of the scenario (same seed, same warm-up, nobody
acting, as in the quality benchmark's baseline) this module asks what any
placement, even a fractional one in which a guest's demand could be split
over several nodes, must still suffer. A real placement is one of those
placements, so every figure below is a lower bound for every balancer.

Notation for one step of length dt: `d_g` is guest g's CPU demand in cores,
already capped at its vCPUs (the physics does the same: a guest cannot use
more cores than it has), `D` their sum over running guests, `C_n` the cores
of powered node n, `C` their sum, `C_big` the largest, `theta` the
scenario's cpu_max (< 1); `m_g` a guest's host memory (what it touched plus
QEMU's overhead, `pvesim.physics.memhost`), `b_n` a node's own use, `M_n` its
memory, `mu` the scenario's memory_max.

- **CPU starvation** >= max(D - C, sum_g max(0, d_g - C_big)) * dt. A node
  delivers at most its cores, so the cluster delivers at most C; and a guest
  runs on one node, so it gets at most C_big.
- **node-s above cpu_max** >= dt if D > theta * C or some d_g > theta * C_big,
  else 0. A node is above when what it delivers, min(load, C_n), exceeds
  theta * C_n; if every node carried at most theta * C_n the cluster would
  carry at most theta * C < D. One node can take all the excess (starving,
  which the starvation bound counts separately), so one node is all the
  bound can claim: the figures are bounds each on its own, not one plan.
- **node-s above memory_max** >= dt if sum_n b_n + sum_g m_g > mu * sum_n M_n
  or some guest has b_n + m_g > mu * M_n on every node n; the same argument.
  Migration copies only add memory, so leaving them out keeps the bound.
- **migrations**, for a stated relief: "every step at which the baseline has
  node n above a maximum for more than `react` seconds (an episode the agent
  is meant to act on, not a burst), and the fluid bound says no node need be
  above, finds n at or below that maximum". Guests moved onto n only add
  load, so n must lose guests it holds in the baseline: at such a step t at
  least k_n(t) of them, the fewest whose demand covers n's excess
  (load_n - theta * C_n; largest first gives the fewest). The guests removed
  from n by the end must cover every such step, so at least max_t k_n(t)
  distinct guests leave n, each by its own migration, and guests start on
  one node each, so the bound is the sum over nodes of max_t k_n(t), with
  CPU and memory steps both counted (max of the two per node). A planner
  with hindsight may move them before the load arrives; the bound still
  holds, and it ignores pinned guests and HA rules, which only raise it.

The bound is taken over the baseline's running guests and powered nodes. It
holds for a balancer's run as long as the balancer cannot change those,
true for every scenario without node failures (HA restarts would then
depend on where guests were).

    .venv/bin/python bench/bound.py [--hours 24] [--seed 0] [--scenario NAME ...]
        [--quality bench/results/quality.json] [--out bench/results/bound.json]

`ratio_to_bound(summary, bound)` gives any run's figures (a `quality.summarize`
dict) as multiples of the bound; quality.py can call it next to its own
ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pvesim.cluster import Simulator  # noqa: E402
from pvesim.physics import memhost  # noqa: E402
from pvesim.state import Guest  # noqa: E402
from simlab.inprocess import WARMUP, ScenarioSource, scenario_of  # noqa: E402

REACT = 60.0
"""Seconds of a baseline episode the migration bound's relief forgives: the
agent's one-minute EMA is designed to let shorter bursts pass."""

BOUND_KEYS = (
    "cpu_starvation_core_seconds",
    "node_seconds_above_cpu_max",
    "node_seconds_above_memory_max",
    "migrations",
)


@dataclass
class _NodeTrack:
    """A node's baseline episodes, as the bound follows them."""

    cpu_since: float | None = None
    mem_since: float | None = None
    cpu_moves: int = 0
    mem_moves: int = 0


@dataclass
class Bound:
    """Lower bounds for one scenario run; see the module docstring."""

    cpu_max: float
    memory_max: float
    react: float = REACT
    simulated_seconds: float = 0.0
    cpu_starvation_core_seconds: float = 0.0
    node_seconds_above_cpu_max: float = 0.0
    node_seconds_above_memory_max: float = 0.0
    nodes: dict[str, _NodeTrack] = field(default_factory=dict)

    @property
    def migrations(self) -> int:
        return sum(max(t.cpu_moves, t.mem_moves) for t in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "simulated_seconds": round(self.simulated_seconds, 6),
            "cpu_starvation_core_seconds": round(self.cpu_starvation_core_seconds, 6),
            "node_seconds_above_cpu_max": round(self.node_seconds_above_cpu_max, 6),
            "node_seconds_above_memory_max": round(self.node_seconds_above_memory_max, 6),
            "migrations": self.migrations,
            "migrations_relief": (
                f"no node above a maximum more than {self.react:.0f} s into a baseline "
                "episode where the fluid bound has none above"),
            "migrations_by_node": {n: max(t.cpu_moves, t.mem_moves)
                                   for n, t in sorted(self.nodes.items())},
        }


def fewest_covering(sizes: Sequence[float], excess: float) -> int:
    """The fewest of `sizes` whose sum reaches `excess` (> 0): largest
    first. All of them when even that does not reach it (cannot happen for
    a node's own load, whose excess is below the sum)."""
    total = 0.0
    for k, s in enumerate(sorted(sizes, reverse=True), start=1):
        total += s
        if total >= excess:
            return k
    return len(sizes)


class _Recorder:
    """Called by the simulator's metrics at every physics step: the
    per-node calls give the step's length, the end-of-step sample computes
    the bound for the step from the live values the physics just set."""

    def __init__(self, sim: Simulator, bound: Bound, react: float) -> None:
        self.sim = sim
        self.bound = bound
        self.react = react
        self.dt = 0.0
        self.t = 0.0
        metrics = sim.metrics
        self._record_node = metrics.record_node
        self._sample = metrics.sample
        metrics.record_node = self.record_node  # type: ignore[method-assign, assignment]
        metrics.sample = self.sample  # type: ignore[method-assign]
        for name in sim.node_names:
            bound.nodes[name] = _NodeTrack()

    def record_node(self, t: float, dt: float, *args: Any) -> None:
        self.t, self.dt = t, dt
        self._record_node(t, dt, *args)

    def sample(self, t: float, values: dict[str, tuple[float, float]]) -> None:
        self._sample(t, values)
        if self.dt > 0:
            self.step(t, self.dt)

    def step(self, t: float, dt: float) -> None:
        b, sim = self.bound, self.sim
        theta, mu = b.cpu_max, b.memory_max
        powered = [n for n in sim.nodes.values() if n.powered]
        if not powered:
            return
        cores = [float(n.cores) for n in powered]
        big = max(cores)
        loads: dict[str, tuple[list[Guest], float, float]] = {}
        demand = 0.0
        memory = 0.0
        lonely_cpu = 0.0
        too_big_cpu = False
        too_big_mem = False
        for n in powered:
            guests = [g for g in sim.guests_on(n.name) if g.status == "running"]
            load = sum(g.live_demand for g in guests)
            mem = float(n.base_mem) + sum(float(memhost(g)) for g in guests)
            loads[n.name] = (guests, load, mem)
            demand += load
            memory += mem - n.base_mem
            for g in guests:
                if g.live_demand > big:
                    lonely_cpu += g.live_demand - big
                if g.live_demand > theta * big:
                    too_big_cpu = True
        base = sum(float(n.base_mem) for n in powered)
        capacity_mem = sum(float(n.memory) for n in powered)
        memory_all = memory + base
        for guests, _load, _mem in loads.values():
            for g in guests:
                if all(n.base_mem + memhost(g) > mu * n.memory for n in powered):
                    too_big_mem = True
                    break
        b.simulated_seconds += dt
        b.cpu_starvation_core_seconds += max(demand - sum(cores), lonely_cpu, 0.0) * dt
        cpu_forced = demand > theta * sum(cores) or too_big_cpu
        mem_forced = memory_all > mu * capacity_mem or too_big_mem
        if cpu_forced:
            b.node_seconds_above_cpu_max += dt
        if mem_forced:
            b.node_seconds_above_memory_max += dt
        for n in powered:
            guests, load, mem = loads[n.name]
            track = b.nodes[n.name]
            cpu_over = load > theta * n.cores
            mem_over = mem > mu * n.memory
            track.cpu_since = (track.cpu_since if track.cpu_since is not None else t) \
                if cpu_over else None
            track.mem_since = (track.mem_since if track.mem_since is not None else t) \
                if mem_over else None
            if cpu_over and not cpu_forced and t - track.cpu_since >= self.react:  # type: ignore[operator]
                k = fewest_covering([g.live_demand for g in guests], load - theta * n.cores)
                track.cpu_moves = max(track.cpu_moves, k)
            if mem_over and not mem_forced and t - track.mem_since >= self.react:  # type: ignore[operator]
                k = fewest_covering([float(memhost(g)) for g in guests], mem - mu * n.memory)
                track.mem_moves = max(track.mem_moves, k)


def bound(source: ScenarioSource, *, seed: int, duration: float, warmup: float = WARMUP,
          react: float = REACT) -> Bound:
    """The scenario's bound over the same window the quality benchmark
    measures: `warmup` seconds then `duration`, from the simulator's start
    (its metrics count the warm-up too)."""
    sim = Simulator(scenario_of(source), seed=seed)
    out = Bound(cpu_max=sim.metrics.cpu_max, memory_max=sim.metrics.memory_max, react=react)
    _Recorder(sim, out, react)
    sim.advance(warmup)
    sim.advance(duration)
    return out


def _migrations(summary: dict[str, Any]) -> float:
    m = summary.get("migrations")
    if isinstance(m, dict):
        return float(m["count"])
    return float(m or 0)


def ratio_to_bound(summary: dict[str, Any], limit: dict[str, Any]) -> dict[str, float | None]:
    """A run's figures (a `quality.summarize` dict, or any dict with the
    same keys) divided by the bound (`Bound.to_dict()`): 1.0 is the best
    any balancer could do; None where the bound is zero (no ratio exists;
    the figure itself then says how far from perfect the run is)."""
    out: dict[str, float | None] = {}
    for key in BOUND_KEYS:
        got = _migrations(summary) if key == "migrations" else float(summary[key])
        lim = float(limit[key])
        out[key] = round(got / lim, 3) if lim > 0 else None
    return out


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per scenario, bound, baseline and agent with the ratios."""
    labels = {
        "cpu_starvation_core_seconds": "CPU starvation (core-s)",
        "node_seconds_above_cpu_max": "node-s above cpu_max",
        "node_seconds_above_memory_max": "node-s above memory_max",
        "migrations": "migrations",
    }
    out: list[str] = []
    for r in rows:
        out.append(f"**{r['scenario']}** (seed {r['seed']})\n")
        have = "agent" in r
        head = "| figure | bound | no balancer | x bound |"
        sep = "|---|---:|---:|---:|"
        if have:
            head += " pve-balancer | x bound |"
            sep += "---:|---:|"
        out += [head, sep]
        for key, label in labels.items():
            lim = float(r["bound"][key])
            cells = [_fmt(lim), _fmt(float(r["baseline"][key])),
                     _fmt(r["baseline_to_bound"][key], 2)]
            if have:
                cells += [_fmt(float(r["agent"][key])), _fmt(r["agent_to_bound"][key], 2)]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _flat(summary: dict[str, Any]) -> dict[str, float]:
    return {k: (_migrations(summary) if k == "migrations" else float(summary[k]))
            for k in BOUND_KEYS}


def main(argv: Sequence[str] | None = None) -> int:
    from bench.quality import SCENARIOS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--react", type=float, default=REACT)
    ap.add_argument("--quality", type=Path, default=None,
                    help="a quality.json of the same seed and hours: adds its runs and ratios")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bound.json")
    args = ap.parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}
    if args.quality is not None:
        doc = json.loads(args.quality.read_text())
        for r in doc["results"]:
            if r["seed"] == args.seed and r["hours"] == args.hours:
                runs[r["scenario"]] = r
    rows = []
    t0 = time.perf_counter()
    for name in args.scenario or list(SCENARIOS):
        t = time.perf_counter()
        lim = bound(SCENARIOS[name], seed=args.seed, duration=args.hours * 3600,
                    react=args.react).to_dict()
        print(f"{name}: bound in {time.perf_counter() - t:.1f} s", flush=True)
        row: dict[str, Any] = {"scenario": name, "seed": args.seed, "hours": args.hours,
                               "bound": lim}
        if name in runs:
            base, agent = _flat(runs[name]["baseline"]), _flat(runs[name]["agent"])
            row |= {"baseline": base, "agent": agent,
                    "baseline_to_bound": ratio_to_bound(base, lim),
                    "agent_to_bound": ratio_to_bound(agent, lim)}
        else:
            from bench import harness
            from bench.quality import summarize

            base_run = harness.run(SCENARIOS[name], seed=args.seed,
                                   duration=args.hours * 3600, with_agent=False)
            base = _flat(summarize(base_run))
            row |= {"baseline": base, "baseline_to_bound": ratio_to_bound(base, lim)}
        rows.append(row)
    doc_out = {"benchmark": "bound", "command": "python bench/bound.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "quality_file":
        str(args.quality) if args.quality else None,
        "total_wall_seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc_out, indent=1) + "\n")
    print()
    print(table(rows))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
