"""Write bench/scenarios/quick-3node.yaml: the small scenario of
`bench/run --quick`, from the Bitbrains traces (GWA-T-12 Bitbrains, Grid
Workloads Archive, TU Delft).

Why: CI needs a run of minutes that still makes the agent work: 36 trace
VMs (a seeded sample), half of them on pve1 of three 16-core, 26 GiB nodes, so pve1
saturates in CPU and memory within the first hour and the agent has to act; two simulated
hours (`duration`), with no nightly backup in the window.

    .venv/bin/python bench/make_quick.py    # deterministic; rewrites the YAML
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.trace_scenario import day_scenario, trace_guests, write  # noqa: E402
from pvesim.traces import available_vms, load_traces  # noqa: E402

OUT = REPO / "bench" / "scenarios" / "quick-3node.yaml"
NODES = ["pve1", "pve2", "pve3"]
COUNTS = [18, 9, 9]
SEED = 20130804
HOURS = 2


def build() -> dict[str, object]:
    rng = random.Random(SEED)
    vms = available_vms()
    traces = load_traces(vms)
    picked = sorted(rng.sample(vms, sum(COUNTS)))
    placement = [node for node, count in zip(NODES, COUNTS, strict=True) for _ in range(count)]
    rng.shuffle(placement)
    scenario = day_scenario(
        "quick-3node",
        "The small scenario of bench/run --quick, from the Bitbrains GWA-T-12 Rnd traces "
        "(GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft): 36 trace VMs, 18 of them "
        "on pve1 of three 16-core, 26 GiB nodes; two hours. Written by bench/make_quick.py.",
        [{"name": n, "cores": 16, "memory": "26GiB", "base_memory": "4GiB"} for n in NODES],
        trace_guests(list(zip(picked, placement, strict=True)), traces, rng, first_vmid=4000))
    scenario["duration"] = HOURS * 3600
    scenario.pop("backup_jobs")
    return scenario


def main() -> int:
    write(OUT, build(), "bench/make_quick.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
