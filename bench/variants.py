"""The hotspot day and its variants: how a change to CPU relief is judged.

The hotspot day (`bench/scenarios/bitbrains-hotspot.yaml`) is one path:
CPU relief draws nothing at random, so its figures are the same at every
seed, and one changed decision early in the day moves its migrations and
node-s above `cpu_max` by 15-30 % (docs/benchmarks.md 1a, "The hotspot day
is one path"). A rule whose gain shows only there is the figures of one
trace file. This runs the agent, as `bench/quality.py` runs it, on the day
itself (variant 0) and on variants built by the scenario's own generator
at other seeds (`make_hotspot.build(SEED + n)`: the same 20 hot VMs packed
on pve1 and pve2, other ordinary VMs, other trace offsets), and writes
each day's figures and the variants' totals.

    .venv/bin/python bench/variants.py [--variants 0 1 2 3 4 5 6] [--jobs 2]
        [--set KEY=VALUE ...] [--hours 24] [--out bench/results/hotspot-variants.json]
    .venv/bin/python bench/variants.py --table A.json B.json ...

`--table` prints committed results side by side (e.g. the policy and a
candidate rule run from another tree with `--out`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import harness, make_hotspot  # noqa: E402
from bench.quality import _count, agent_config, code_state, summarize  # noqa: E402

DEFAULT_VARIANTS = tuple(range(7))
OUT = REPO / "bench" / "results" / "hotspot-variants.json"

FIGURES = (
    ("migrations", "migrations"),
    ("node-s above cpu_max", "node_seconds_above_cpu_max"),
    ("starvation core-s", "cpu_starvation_core_seconds"),
    ("GiB copied", "gib_copied"),
    ("undone", "undone"),
)
"""(label, key) of each day's figures, in table order."""


def decision_kind(sentence: str) -> str:
    """What kind of CPU decision started a migration: a saturated node's
    starvation cut, a move making room for another (a cascade), or the
    first move of a plan of N moves."""
    if "saturated" in sentence:
        return "saturated"
    if "making room on" in sentence:
        return "cascade"
    planned = re.search(r"move 1 of (\d+) planned", sentence)
    return f"plan of {planned.group(1)}" if planned else "other"


def run_variant(n: int, settings: Sequence[str], hours: float) -> dict[str, Any]:
    """One day with the agent; variant 0 is the committed scenario file."""
    source: Path | dict[str, object] = (
        make_hotspot.OUT if n == 0 else make_hotspot.build(make_hotspot.SEED + n))
    result = harness.run(source, seed=0, duration=hours * 3600, with_agent=True,
                         config=agent_config(settings, 0))
    figures = summarize(result)
    return {
        "variant": n,
        "migrations": figures["migrations"]["count"],
        "node_seconds_above_cpu_max": round(figures["node_seconds_above_cpu_max"]),
        "cpu_starvation_core_seconds": round(figures["cpu_starvation_core_seconds"]),
        "gib_copied": round(figures["migrations"]["bytes"] / 2**30),
        "undone": figures["economy"]["undone"],
        "decisions_by_kind": _count([decision_kind(str(f["sentence"])) for f in result.started]),
        "wall_seconds": round(result.wall_seconds, 1),
    }


def totals(days: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The variants' sums (variant 0, the benchmark day, left out: it is
    the day a rule is suspected of being fitted to)."""
    others = [d for d in days if d["variant"] != 0]
    return {key: sum(int(d[key]) for d in others) for _, key in FIGURES}


def table(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Days as rows, each figure with one column per run (`name`, doc)."""
    names = [name for name, _ in runs]
    head = "| day | " + " | ".join(f"{label}: {' / '.join(names)}" for label, _ in FIGURES) + " |"
    lines = [head, "|---|" + "---|" * len(FIGURES)]
    by_run = [{d["variant"]: d for d in doc["days"]} for _, doc in runs]
    variants = sorted(set().union(*by_run))
    for n in variants:
        label = "the benchmark day" if n == 0 else f"variant {n}"
        cells = [" / ".join(f"{r[n][key]:,}" if n in r else "-" for r in by_run)
                 for _, key in FIGURES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sums = [doc["totals"] for _, doc in runs]
    cells = [" / ".join(f"{s[key]:,}" for s in sums) for _, key in FIGURES]
    lines.append("| the variants (1-6) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=int, nargs="+", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--jobs", type=int, default=1, help="days run in parallel (processes)")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="agent configuration key as in balancer.yaml (repeatable)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", type=Path, nargs="+", metavar="RESULT.json",
                    help="print these results side by side instead of running")
    args = ap.parse_args(argv)
    if args.table:
        runs = [(p.stem, json.loads(p.read_text())) for p in args.table]
        print(table(runs))
        return 0
    if args.hours <= 0 or args.jobs < 1 or any(n < 0 for n in args.variants):
        ap.error("--hours and --jobs must be positive, variants 0 or more")
    agent_config(args.set, 0)  # a bad --set fails before any day runs
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_variant, n, args.set, args.hours) for n in args.variants]
        days = []
        for future in futures:
            day = future.result()
            print(json.dumps(day), flush=True)
            days.append(day)
    doc = {
        "benchmark": "hotspot-variants",
        "command": "python bench/variants.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "code": code_state(),
        "hours": args.hours,
        "settings": list(args.set),
        "total_wall_seconds": round(time.perf_counter() - t0, 1),
        "days": days,
        "totals": totals(days),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(table([(args.out.stem, doc)]))
    print(f"\ntotal wall {doc['total_wall_seconds']} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
