"""Write bench/scenarios/bitbrains-imbalanced-3day.yaml: the imbalanced
Bitbrains day (GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft) run
for three days.

Why: every other scenario lasts one day, so nothing shows what builds up
over several: guests the agent moved drifting back into imbalance as their
traces change, cooldowns and the no-return window expiring, three nightly
backups. The cluster, the guests and their offsets are exactly those of
bench/scenarios/bitbrains-imbalanced.yaml (same seed, same VMs); only the
name, the description and the duration differ, so its first day can be
checked against the one-day run.

    .venv/bin/python bench/make_threeday.py    # deterministic; rewrites the YAML
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.trace_scenario import write  # noqa: E402

SOURCE = REPO / "bench" / "scenarios" / "bitbrains-imbalanced.yaml"
OUT = REPO / "bench" / "scenarios" / "bitbrains-imbalanced-3day.yaml"
DAYS = 3


def build() -> dict[str, object]:
    scenario = dict(yaml.safe_load(SOURCE.read_text()))
    scenario["name"] = "bitbrains-imbalanced-3day"
    scenario["description"] = (
        f"bitbrains-imbalanced (GWA-T-12 Bitbrains, Grid Workloads Archive, TU Delft) for "
        f"{DAYS} days: the same cluster, VMs and offsets, to show multi-day drift. Written by "
        f"bench/make_threeday.py from bench/scenarios/bitbrains-imbalanced.yaml.")
    scenario["duration"] = DAYS * 86400
    return scenario


def main() -> int:
    write(OUT, build(), "bench/make_threeday.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
