"""Write bench/scenarios/bitbrains-memheavy.yaml: a cluster whose memory
sits close to memory_max, built from the Bitbrains traces (GWA-T-12
Bitbrains, Grid Workloads Archive, TU Delft).

Why: on the other scenarios memory never comes near `memory_max`, so they
cannot show whether proactive spreading still prevents memory saturation
where it matters. Here 100 trace VMs (a seeded sample) are placed unevenly
(34 / 26 / 22 / 18) on four 72 GiB nodes whose hosts keep 16 GiB for
themselves (kernel, services, ZFS ARC). Nodes then run at about 45-75 %
memory and the traces' memory bursts carry them above 0.8 several times a
day without a balancer. Each VM replays its own trace from a seeded time
offset, so bursts are not aligned.

    .venv/bin/python bench/make_memheavy.py    # deterministic; rewrites the YAML
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.trace_scenario import day_scenario, trace_guests, write  # noqa: E402
from pvesim.traces import available_vms, load_traces  # noqa: E402

OUT = REPO / "bench" / "scenarios" / "bitbrains-memheavy.yaml"
NODES = ["pve1", "pve2", "pve3", "pve4"]
COUNTS = [34, 26, 22, 18]
SEED = 20130802


def build() -> dict[str, object]:
    rng = random.Random(SEED)
    vms = available_vms()
    traces = load_traces(vms)
    picked = sorted(rng.sample(vms, sum(COUNTS)))
    placement = [node for node, count in zip(NODES, COUNTS, strict=True) for _ in range(count)]
    rng.shuffle(placement)
    return day_scenario(
        "bitbrains-memheavy",
        "Memory-heavy cluster from the Bitbrains GWA-T-12 Rnd traces (GWA-T-12 "
        "Bitbrains, Grid Workloads Archive, TU Delft): 100 trace VMs placed 34/26/22/18 "
        "on four 72 GiB nodes that keep 16 GiB for the host; nodes run at about 45-75 % "
        "memory and bursts cross 0.8. Written by bench/make_memheavy.py.",
        [{"name": n, "cores": 48, "memory": "72GiB", "base_memory": "16GiB"} for n in NODES],
        trace_guests(list(zip(picked, placement, strict=True)), traces, rng, first_vmid=2000))


def main() -> int:
    write(OUT, build(), "bench/make_memheavy.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
