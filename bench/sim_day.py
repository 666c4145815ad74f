"""Acceptance benchmark: one simulated day of the 4-node / 120-VM Bitbrains
scenario in stepped mode (target: under 2 minutes wall time).

    .venv/bin/python bench/sim_day.py [--seed N] [--hours H] [--plot out.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pvesim import traces  # noqa: E402
from pvesim.cluster import Simulator  # noqa: E402

SCENARIO = REPO / "bench" / "scenarios" / "bitbrains-4node-120vm.yaml"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--plot")
    ap.add_argument("--json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sim = Simulator.from_file(SCENARIO, seed=args.seed)
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    sim.advance(args.hours * 3600)
    t_run = time.perf_counter() - t1
    m = sim.metrics.to_dict()
    m.pop("migrations", None)
    print(f"guests: {len(sim.guests)}  nodes: {len(sim.nodes)}  seed: {args.seed}")
    print(f"build (incl. trace load {traces.last_load_seconds:.2f} s): {t_build:.2f} s")
    print(f"simulated {args.hours:g} h in {t_run:.2f} s wall  (total {t_build + t_run:.2f} s)")
    print(
        json.dumps(
            {
                k: m[k]
                for k in (
                    "cpu_starvation_core_seconds",
                    "node_seconds_above_cpu_max",
                    "node_seconds_above_memory_max",
                    "peak_node_cpu",
                    "peak_node_memory",
                )
            },
            indent=1,
        )
    )
    if args.json:
        sim.metrics.write_json(args.json)
    if args.plot:
        from pvesim.plot import write_png

        write_png(sim, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
