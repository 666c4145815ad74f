"""What-if experiment: the quality benchmark with ONE busiest VM kept in CPU mode.

The policy keeps every VM tied for the highest CPU share on a source node
(docs/policy.md). On a saturated node fair sharing makes CPU-capped VMs tie,
so several are kept and only small VMs remain candidates. This script runs
`bench/quality.py` unchanged except that, inside this process only, the
candidate list is widened: among tied busiest VMs only the lowest vmid is
kept, the others become candidates (largest share first, as the policy
orders them). It measures what that policy variant would change; it does
not alter the agent's code.

    .venv/bin/python bench/whatif_single_busiest.py --hours 24 --seed 0 \\
        --scenario bitbrains-hotspot --scenario bitbrains-imbalanced \\
        --json-name quality-whatif-single-busiest.json --no-plot

It reaches into policy internals (`_candidates`, `_filter_reason`); if those
change, it fails loudly rather than measuring something else.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pve_balancer import policy  # noqa: E402

_original = policy._candidates


def _single_busiest(view: Any, mode: policy.Mode, source: Any, state: policy.PolicyState,
                    rng: random.Random) -> tuple[list[Any], dict[str, int], list[int]]:
    movable, filtered, kept = _original(view, mode, source, state, rng)
    if mode is not policy.Mode.CPU or len(kept) <= 1:
        return movable, filtered, kept
    freed = [g for g in view.snapshot.guests
             if g.node == source.name and g.vmid in kept[1:]
             and policy._filter_reason(g, view, state, view.pinned) is None]
    if freed:
        movable = sorted([*movable, *freed], key=lambda g: (-view.share(g, source), g.vmid))
        filtered = {**filtered, "busiest vm kept": 1}
    return movable, filtered, kept[:1]


def main(argv: list[str] | None = None) -> int:
    if not callable(getattr(policy, "_filter_reason", None)):
        raise SystemExit("policy internals changed: _filter_reason is gone")
    policy._candidates = _single_busiest  # type: ignore[assignment]
    from bench import quality

    return quality.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
