"""Side by side: the quality benchmark's figures of two runs of the same
scenarios and seed (`bench/quality.py` JSON files), usually the policy
before and after a change, with the baseline (no balancer) beside them.

    .venv/bin/python bench/compare.py [LABEL=]BEFORE.json [LABEL=]AFTER.json [...]

Prints one Markdown table per scenario and a line of totals over all the
scenarios the files share (migrations, GiB copied, ping-pongs, undone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GIB = float(1 << 30)
ROWS = (
    ("CPU starvation (core-s)", lambda r: r["cpu_starvation_core_seconds"]),
    ("node-s above cpu_max", lambda r: r["node_seconds_above_cpu_max"]),
    ("node-s above memory_max", lambda r: r["node_seconds_above_memory_max"]),
    ("migrations", lambda r: r["migrations"]["count"]),
    ("migrated GiB", lambda r: r["migrations"]["bytes"] / GIB),
    ("ping-pongs (back within 1 h)", lambda r: r["migrations"]["ping_pongs"]),
    ("undone (ever)", lambda r: r["economy"]["undone"]),
)
TOTALS = ("migrations", "migrated GiB", "ping-pongs (back within 1 h)", "undone (ever)")


def _load(path: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads(path.read_text())
    return {r["scenario"]: r for r in doc["results"]}


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.1f}"


def compare(args: list[str]) -> str:
    labelled = [a.split("=", 1) if "=" in a else [Path(a).stem, a] for a in args]
    runs = [_load(Path(path)) for _, path in labelled]
    names = [label for label, _ in labelled]
    shared = [s for s in runs[0] if all(s in r for r in runs[1:])]
    out: list[str] = []
    totals = {row: [0.0] * len(runs) for row in TOTALS}
    for scenario in shared:
        seed = runs[0][scenario]["seed"]
        out.append(f"\n**{scenario}** (seed {seed})\n")
        out.append("| figure | no balancer | " + " | ".join(names) + " |")
        out.append("|---|---|" + "---|" * len(names))
        for label, get in ROWS:
            base = runs[0][scenario]["baseline"]
            try:
                shown_base = _fmt(get(base))
            except (KeyError, TypeError):
                shown_base = "-"
            values = [get(r[scenario]["agent"]) for r in runs]
            if label in totals:
                for i, v in enumerate(values):
                    totals[label][i] += v
            out.append(f"| {label} | {shown_base} | " + " | ".join(_fmt(v) for v in values) + " |")
    out.append("\n**all scenarios above**\n")
    out.append("| figure | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for label, values in totals.items():
        out.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(compare(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
