"""Everything the benchmarks measure, in one command (`bench/run`).

Why one command: the figures in docs/benchmarks.md come from five scripts
run by hand with the right arguments in the right order (the bound reads the
quality run, the peers need their own virtualenv). This module only
sequences them and puts their figures side by side; every figure is
computed by the module that owns it:

- quality (bench/quality.py): no balancer and pve-balancer on every
  scenario, with the PNGs (one per run, baseline and agent);
- peers (bench/peers.py): ProxLB 2.3.0 at its three settings when
  `.venv-bench` exists (`--peers` builds it with dev/peers-venv), and PVE's
  ha-auto-rebalance on the all-HA scenario (always: it is the simulator's
  own model); merged into `peers-<scenario>.json` with the panels
  `peers-<scenario>.png` (one row per balancer; unless `--no-plot`);
- the bound (bench/bound.py) per scenario, and every balancer as a ratio
  to it;
- scale (bench/scale.py), unless `--no-scale`.

Writes `quality.json`, `peers.json`, `bound.json`, `scale.json`, the PNGs
and `report.md` (per scenario every balancer and the bound side by side)
into `--out` (bench/results). `--quick` runs the CI check instead
(bench/quick.py). GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bound, peers, quality, quick  # noqa: E402
from bench.proxlb_run import SETTINGS, VENV  # noqa: E402

SCENARIOS: dict[str, Path] = dict(peers.PEER_SCENARIOS)
"""What a full run covers (the peers' scenarios); the quick scenario is
only run by --quick."""

DAYS = peers.DAYS
"""Scenarios longer than `--hours`: run for this many times `--hours`."""

FIGURES = (
    *quality.PHYSICS_FIGURES,
    ("migrations", "migrations", 0),
    ("ping-pongs (back within 1 h)", "ping_pongs", 0),
    ("undone (ever)", "undone", 0),
)
BOUND_FIGURES = frozenset(bound.BOUND_KEYS)


def flat(summary: Mapping[str, Any]) -> dict[str, float]:
    """The report's figures from a `quality.summarize` dict or a
    `peers.figures` dict (they differ only in how migrations nest)."""
    out: dict[str, float] = {}
    for _, key, _ in FIGURES:
        if key == "migrations":
            m = summary["migrations"]
            out[key] = float(m["count"] if isinstance(m, Mapping) else m)
        elif key == "ping_pongs" and "ping_pongs" not in summary:
            out[key] = float(summary["migrations"]["ping_pongs"])
        elif key == "undone" and "undone" not in summary:
            out[key] = float(summary["economy"]["undone"])
        else:
            out[key] = float(summary[key])
    return out


def _cell(value: float, digits: int, limit: float | None) -> str:
    text = f"{value:,.{digits}f}"
    if limit is not None and limit > 0:
        text += f" ({value / limit:.2f}x)"
    return text


def scenario_table(columns: Mapping[str, Mapping[str, float]],
                   limit: Mapping[str, Any] | None) -> str:
    """Markdown: one row per figure, the bound then one column per
    balancer; figures the bound covers carry their ratio to it."""
    names = list(columns)
    head = "| figure | bound | " + " | ".join(peers.LABELS.get(n, n) for n in names) + " |"
    lines = [head, "|---|" + "---:|" * (len(names) + 1)]
    for label, key, digits in FIGURES:
        lim = float(limit[key]) if limit is not None and key in BOUND_FIGURES else None
        cells = ["-" if lim is None else f"{lim:,.{digits}f}"]
        cells += [_cell(columns[n][key], digits, lim) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(doc: Mapping[str, Any]) -> str:
    """The whole report.md from the run's document."""
    lines = ["# Benchmark report", "",
             f"`{doc['command']}` at commit {doc['code']['commit']} "
             f"({doc['date']}, Python {doc['python']}, {doc['total_wall_seconds']:,.0f} s wall). "
             "Workloads: GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft. "
             "Figures from the simulator's physics; `(Nx)`: the figure divided by the bound "
             "(bench/bound.py; 1.00x is the best any balancer could do, no ratio where the "
             "bound is zero).", ""]
    if not doc["peers_ran"]:
        lines += ["ProxLB was not run (no `.venv-bench`; `bench/run --peers` builds it).", ""]
    for s in doc["scenarios"]:
        lines += [f"## {s['scenario']}", "",
                  f"`{s['file']}`, seed {s['seed']}, {s['hours']:g} h simulated.", "",
                  scenario_table(s["columns"], s["bound"]), ""]
        for png in s["pngs"]:
            lines.append(f"![{png}]({png})")
        lines.append("")
    if doc.get("scale") is not None:
        from bench import scale

        lines += ["## Scale", "", scale.table(doc["scale"]["rows"]), ""]
    return "\n".join(lines)


def run_full(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    code = quality.code_state()
    if args.peers and not (VENV / "bin" / "python").exists():
        subprocess.run([str(REPO / "dev" / "peers-venv")], check=True, cwd=REPO)
    with_proxlb = (VENV / "bin" / "python").exists() and not args.no_peers
    config = quality.agent_config((), args.seed)
    names = args.scenario or list(SCENARIOS)
    quality_results, peer_results, bound_rows, rows = [], [], [], []
    for name in names:
        path, hours = SCENARIOS[name], args.hours * DAYS.get(name, 1)
        q = quality.run_scenario(name, path, seed=args.seed, hours=hours, out=out,
                                 plot=not args.no_plot, plot_baseline=not args.no_plot,
                                 config=config)
        quality_results.append(q)
        columns = {"none": flat(q["baseline"]), "pve-balancer": flat(q["agent"])}
        others: list[str] = []
        if name in peers.ALL_HA:
            others += ["pve-auto-rebalance", "pve-auto-rebalance-dynamic"]
        if with_proxlb:
            others += [b for b in (peers.ALL_HA_BALANCERS if name in peers.ALL_HA else SETTINGS)
                       if b in SETTINGS]
        # the panels (one row per balancer) need every balancer's series:
        # quality's two runs are repeated for them (the same seed gives the
        # same figures), the table keeps quality's
        panel_runs = [] if args.no_plot else ["none", "pve-balancer"]
        if others or panel_runs:
            p = peers.run_scenario(name, seed=args.seed, hours=hours,
                                   balancers=panel_runs + others, path=path)
            peers.record(p, out, plot=not args.no_plot)
            peer_results.append(peers.without_series(p))
            columns |= {b: flat(f) for b, f in p["balancers"].items() if b in others}
        print(f"{name}: bound ...", flush=True)
        lim = bound.bound(path, seed=args.seed, duration=hours * 3600).to_dict()
        bound_rows.append({"scenario": name, "seed": args.seed, "hours": hours, "bound": lim,
                           "to_bound": {b: bound.ratio_to_bound(c, lim)
                                        for b, c in columns.items()}})
        pngs = [] if args.no_plot else [peers.panel_file(out, name).name,
                                        f"quality-{name}-baseline.png", f"quality-{name}.png"]
        rows.append({"scenario": name, "file": q["file"], "seed": args.seed, "hours": hours,
                     "bound": lim, "columns": columns, "pngs": pngs})
    common = {"python": platform.python_version(), "code": code,
              "traces": "GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft"}
    command = "bench/run " + " ".join(args.argv)
    _write(out / "quality.json", {"benchmark": "quality", "command": command, **common,
                                  "results": quality_results})
    _write(out / "peers.json", {"benchmark": "peers", "command": command, **common,
                                "proxlb_ran": with_proxlb, "results": peer_results})
    _write(out / "bound.json", {"benchmark": "bound", "command": command, **common,
                                "rows": bound_rows})
    scale_doc = None
    if not args.no_scale:
        from bench import scale

        scale.main(["--out", str(out / "scale.json")])
        scale_doc = json.loads((out / "scale.json").read_text())
    doc = {"command": command, **common, "peers_ran": with_proxlb, "scenarios": rows,
           "scale": scale_doc,
           "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "total_wall_seconds": round(time.perf_counter() - t0, 1)}
    (out / "report.md").write_text(report(doc))
    print(f"written {out / 'report.md'} ({doc['total_wall_seconds']:,.0f} s wall)")
    return 0


def run_quick(args: argparse.Namespace) -> int:
    reference_path: Path = args.reference
    if args.check is not None:
        doc = json.loads(Path(args.check).read_text())
    else:
        doc = quick.run(args.out, plot=not args.no_plot)
        print(f"written {args.out / 'quick.json'}")
    if args.update_reference:
        quick.write_reference(doc, reference_path)
        return 0
    return quick.check(doc, json.loads(reference_path.read_text()))


def _write(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written {path}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="the CI check: small scenario, compared with the reference")
    ap.add_argument("--check", metavar="QUICK_JSON",
                    help="with --quick: compare this quick.json instead of running")
    ap.add_argument("--update-reference", action="store_true",
                    help="with --quick: record the result as the reference")
    ap.add_argument("--reference", type=Path, default=quick.REFERENCE)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--peers", action="store_true",
                    help="build .venv-bench (dev/peers-venv) if missing, then run ProxLB")
    ap.add_argument("--no-peers", action="store_true", help="do not run ProxLB")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.hours <= 0:
        ap.error("--hours must be positive")
    if (args.check or args.update_reference) and not args.quick:
        ap.error("--check and --update-reference go with --quick")
    return run_quick(args) if args.quick else run_full(args)


if __name__ == "__main__":
    raise SystemExit(main())
