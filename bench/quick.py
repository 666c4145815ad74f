"""The quick check of `bench/run --quick`: pve-balancer's headline figures
on a small scenario, compared with a committed reference.

Why: the full benchmark takes the better part of an hour; CI needs minutes
and a verdict. The quick scenario (bench/scenarios/quick-3node.yaml, two
simulated hours, three nodes, pve1 overloaded; written by
bench/make_quick.py) is run exactly as the quality benchmark runs a
scenario (bench/quality.py: baseline, then the agent at its defaults, same
seed). The run is deterministic, so a figure that moves means the agent or
the simulator changed. A figure *regresses* when

    figure > reference * (1 + relative) + absolute

with the tolerances of `TOLERANCE`; improvements never fail (they are
printed, with the command that records them as the new reference).

    bench/run --quick                      # run, compare, exit 1 on a regression
    bench/run --quick --check FILE         # compare an existing quick.json only
    bench/run --quick --update-reference   # run and record the reference
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import quality  # noqa: E402

SCENARIO = "quick-3node"
PATH = REPO / "bench" / "scenarios" / f"{SCENARIO}.yaml"
HOURS = 2.0
SEED = 0
REFERENCE = REPO / "bench" / "results" / "quick-reference.json"

TOLERANCE: dict[str, tuple[float, float]] = {
    "cpu_starvation_core_seconds": (0.10, 60.0),
    "node_seconds_above_cpu_max": (0.10, 60.0),
    "node_seconds_above_memory_max": (0.10, 60.0),
    "migrations": (0.25, 1.0),
}
"""(relative, absolute) allowance per headline figure. The absolute part
keeps a figure whose reference is zero or tiny from failing on one 5 s
step of one node (12 steps = 60 node-s; 60 core-s is one core starved for
a minute) or on one extra move; the relative part lets a figure grow by a
tenth (migrations by a quarter) before it counts as a regression."""


def headline(summary: Mapping[str, Any]) -> dict[str, float]:
    """The headline figures of a `quality.summarize` run: starvation,
    node-seconds above the maxima, and every successful migration."""
    return {
        "cpu_starvation_core_seconds": float(summary["cpu_starvation_core_seconds"]),
        "node_seconds_above_cpu_max": float(summary["node_seconds_above_cpu_max"]),
        "node_seconds_above_memory_max": float(summary["node_seconds_above_memory_max"]),
        "migrations": float(summary["migrations"]["count"]),
    }


def allowed(key: str, reference: float) -> float:
    rel, absolute = TOLERANCE[key]
    return reference * (1 + rel) + absolute


def regressions(figures: Mapping[str, float], reference: Mapping[str, float]) -> list[str]:
    """One line per headline figure beyond its tolerance (empty: no regression)."""
    out = []
    for key in TOLERANCE:
        got, ref = float(figures[key]), float(reference[key])
        if got > allowed(key, ref):
            out.append(f"{key}: {got:,.1f} > {allowed(key, ref):,.1f} allowed "
                       f"(reference {ref:,.1f})")
    return out


def report(figures: Mapping[str, float], reference: Mapping[str, float]) -> str:
    lines = ["| figure | reference | allowed | this run | verdict |", "|---|---:|---:|---:|---|"]
    for key in TOLERANCE:
        got, ref = float(figures[key]), float(reference[key])
        verdict = "REGRESSED" if got > allowed(key, ref) else (
            "better" if got < ref else "same")
        lines.append(f"| {key} | {ref:,.1f} | {allowed(key, ref):,.1f} | {got:,.1f} "
                     f"| {verdict} |")
    return "\n".join(lines)


def run(out: Path, *, plot: bool = True) -> dict[str, Any]:
    """Run the quick scenario; write `out`/quick.json (and its PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    result = quality.run_scenario(SCENARIO, PATH, seed=SEED, hours=HOURS, out=out, plot=plot,
                                  plot_baseline=False)
    doc = {"benchmark": "quick", "scenario": SCENARIO, "seed": SEED, "hours": HOURS,
           "code": quality.code_state(), "headline": headline(result["agent"]),
           "baseline_headline": headline(result["baseline"]), "result": result}
    (out / "quick.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def check(doc: Mapping[str, Any], reference_doc: Mapping[str, Any]) -> int:
    """Print the comparison; 1 when a figure regressed, else 0."""
    figures, reference = doc["headline"], reference_doc["headline"]
    print(report(figures, reference))
    bad = regressions(figures, reference)
    for line in bad:
        print(f"regression: {line}", file=sys.stderr)
    if not bad and any(float(figures[k]) < float(reference[k]) for k in TOLERANCE):
        print("better than the reference; record it with bench/run --quick --update-reference")
    return 1 if bad else 0


def write_reference(doc: Mapping[str, Any], path: Path = REFERENCE) -> None:
    ref = {"benchmark": "quick-reference", "scenario": doc["scenario"], "seed": doc["seed"],
           "hours": doc["hours"], "commit": doc["code"]["commit"],
           "tolerance": {k: {"relative": r, "absolute": a} for k, (r, a) in TOLERANCE.items()},
           "headline": doc["headline"], "baseline_headline": doc["baseline_headline"]}
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"written {path}")
