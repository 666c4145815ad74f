"""Write bench/scenarios/bitbrains-affinity-8node.yaml: an 8-node cluster
whose guests are bound by HA rules, pinned or excluded, built from the
Bitbrains traces (GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft).

Why: on the four-node scenarios every guest may go anywhere, so they cannot
show whether a balancer still relieves a hot node when much of what runs
there may not move, or may move only to some nodes. Here 160 trace VMs are
placed unevenly (pve1 and pve2 carry three times their share) on eight
nodes, and on the hot nodes:
- HA node-affinity rules keep groups of guests on named nodes (one strict,
  one preferring a node with a priority, so PVE may place it elsewhere);
- HA resource-affinity rules keep one pair together (positive) and keep
  another set apart (negative);
- some guests have a local resource (a passed-through USB device): pinned,
  they can only move offline;
- some carry the `pve-balancer-exclude` tag.
Each VM replays its own trace from a seeded time offset.

    .venv/bin/python bench/make_affinity.py    # deterministic; rewrites the YAML
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.trace_scenario import day_scenario, trace_guests, write  # noqa: E402
from pvesim.traces import available_vms, load_traces  # noqa: E402

OUT = REPO / "bench" / "scenarios" / "bitbrains-affinity-8node.yaml"
NODES = [f"pve{i}" for i in range(1, 9)]
COUNTS = [42, 38, 14, 14, 14, 14, 12, 12]
SEED = 20130803
EXCLUDE_TAG = "pve-balancer-exclude"


def build() -> dict[str, object]:
    rng = random.Random(SEED)
    vms = available_vms()
    traces = load_traces(vms)
    picked = sorted(rng.sample(vms, sum(COUNTS)))
    placement = [node for node, count in zip(NODES, COUNTS, strict=True) for _ in range(count)]
    rng.shuffle(placement)
    guests = trace_guests(list(zip(picked, placement, strict=True)), traces, rng,
                          first_vmid=3000)
    on = {n: [g for g in guests if g["node"] == n] for n in NODES}
    hot1, hot2 = on["pve1"], on["pve2"]
    rules: list[dict[str, object]] = []

    def ha(group: list[dict[str, object]]) -> list[str]:
        for g in group:
            g["ha"] = True
        return [f"vm:{g['vmid']}" for g in group]

    rules.append({"rule": "db-on-pve1-pve3", "type": "node-affinity", "resources":
                  ha(hot1[0:4]), "nodes": ["pve1", "pve3"], "strict": True,
                  "comment": "licensed database hosts"})
    rules.append({"rule": "prefer-pve2", "type": "node-affinity", "resources":
                  ha(hot2[0:3]), "nodes": ["pve2:2", "pve4:1"], "strict": False})
    rules.append({"rule": "app-with-cache", "type": "resource-affinity", "resources":
                  ha(hot1[4:6]), "affinity": "positive"})
    rules.append({"rule": "replicas-apart", "type": "resource-affinity", "resources":
                  ha([hot1[6], hot2[3], on["pve5"][0]]), "affinity": "negative"})
    for g in hot1[7:9] + hot2[4:6]:
        g["local_resources"] = ["usb0"]
    for g in hot1[9:12] + hot2[6:8]:
        g["tags"] = [EXCLUDE_TAG]
    scenario = day_scenario(
        "bitbrains-affinity-8node",
        "Eight nodes with HA rules, pinned and excluded guests, from the Bitbrains GWA-T-12 "
        "Rnd traces (GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft): 160 trace VMs "
        "placed 42/38 on pve1/pve2 and 12-14 on the others; on the hot nodes node-affinity "
        "(strict and preferred), resource-affinity (positive and negative), guests with a "
        "local USB device, and guests tagged pve-balancer-exclude. Written by "
        "bench/make_affinity.py.",
        [{"name": n, "cores": 48, "memory": "128GiB", "base_memory": "6GiB"} for n in NODES],
        guests)
    scenario["ha_rules"] = rules
    return scenario


def main() -> int:
    write(OUT, build(), "bench/make_affinity.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
