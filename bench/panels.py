"""Per-scenario panels of the peer comparison: one row per balancer, node
CPU and memory over time, migrations marked.

Why a module of its own: `pvesim/plot.py` draws one run from a live
Simulator; the comparison needs every balancer of a scenario on the same
axes, and the balancers of one scenario are not always run together (the
per-scenario results file is merged, see bench/peers.py). So each run keeps
a compact copy of its time series (`series`), stored with its figures, and
the panels are drawn from those stored series (`write_png`), whichever runs
produced them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pvesim.cluster import Simulator

MAX_POINTS = 720
"""Points per node and series kept per run: one per 2 min on a day, 6 min
on three days; enough for a panel a few inches wide."""
LABELLED = 40
"""Migrations are labelled (`vmid→target`, or `N moves` for a batch) when
a panel has at most this many batches; beyond that the labels would cover
the lines, and only the marks are drawn."""


def series(sim: Simulator, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """The run's node CPU and memory fractions (means over windows of the
    simulator's 60 s samples, at most `max_points`), and its migrations."""
    m = sim.metrics
    t = m.series_t
    k = max(1, math.ceil(len(t) / max_points))
    windows = [range(i, min(i + k, len(t))) for i in range(0, len(t), k)]

    def mean(points: Sequence[tuple[float, float]], w: range, j: int) -> float:
        return round(sum(points[i][j] for i in w) / len(w), 4)

    return {
        "hours": [round((t[w[0]] - m.start) / 3600, 4) for w in windows],
        "cpu_max": m.cpu_max,
        "memory_max": m.memory_max,
        "nodes": {name: {"cpu": [mean(pts, w, 0) for w in windows],
                         "memory": [mean(pts, w, 1) for w in windows]}
                  for name, pts in sorted(m.series.items())},
        "migrations": [{"hours": round((r.start - m.start) / 3600, 4), "vmid": r.vmid,
                        "source": r.source, "target": r.target, "ok": r.ok}
                       for r in m.migrations],
    }


def batches(migrations: Sequence[Mapping[str, Any]], gap: float) -> list[list[Any]]:
    """Migrations in groups that start within `gap` hours of the group's
    first (a peer's batch run), in time order: one label per group."""
    groups: list[list[Any]] = []
    for mig in sorted(migrations, key=lambda m: float(m["hours"])):
        if groups and mig["hours"] - groups[-1][0]["hours"] <= gap:
            groups[-1].append(mig)
        else:
            groups.append([mig])
    return groups


def shrink(path: Path) -> None:
    """Re-encode with a 64-colour octree palette: about a fifth of the size,
    and, unlike a median-cut palette, thin lines of eight nodes keep
    colours one can tell apart."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)


def write_png(path: Path, title: str, runs: Mapping[str, Mapping[str, Any]],
              labels: Mapping[str, str]) -> None:
    """One row per balancer of `runs` (balancer → its figures with a
    `series`), CPU on the left and memory on the right, every row on the
    same axes; migrations as marks at the top of both plots in the target
    node's colour (failed ones as red crosses), labelled when few."""
    import matplotlib  # slow import, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = [b for b, r in runs.items() if r.get("series")]
    if not names:
        raise ValueError("no run with a series to plot")
    nodes = sorted({n for b in names for n in runs[b]["series"]["nodes"]})
    palette = plt.get_cmap("tab10" if len(nodes) <= 10 else "tab20")
    colour = {n: palette(i % palette.N) for i, n in enumerate(nodes)}
    end = max(runs[b]["series"]["hours"][-1] for b in names)
    minutes = end <= 3
    scale, unit = (60.0, "minutes") if minutes else (1.0, "hours")
    mem_top = max(105.0, *(max(v for s in runs[b]["series"]["nodes"].values()
                               for v in s["memory"]) * 100 + 8 for b in names))
    fig, axes = plt.subplots(len(names), 2, sharex=True, squeeze=False,
                             figsize=(13, 1.9 * len(names) + 1.1), dpi=80)
    for row, b in enumerate(names):
        s = runs[b]["series"]
        x = [h * scale for h in s["hours"]]
        ax_cpu, ax_mem = axes[row]
        for n, v in s["nodes"].items():
            ax_cpu.plot(x, [c * 100 for c in v["cpu"]], color=colour[n], linewidth=0.7)
            ax_mem.plot(x, [c * 100 for c in v["memory"]], color=colour[n], linewidth=0.7)
        ax_cpu.axhline(s["cpu_max"] * 100, color="grey", linestyle=":", linewidth=0.9)
        ax_mem.axhline(s["memory_max"] * 100, color="grey", linestyle=":", linewidth=0.9)
        ax_cpu.set_ylim(0, 112)
        ax_mem.set_ylim(0, mem_top + 7)
        migs = s["migrations"]
        for ax, top in ((ax_cpu, 106.0), (ax_mem, mem_top + 1)):
            for mig in migs:
                mx = mig["hours"] * scale
                if mig["ok"]:
                    ax.plot(mx, top, marker="v", markersize=3.5, linestyle="none",
                            color=colour.get(mig["target"], "black"))
                else:
                    ax.plot(mx, top, marker="x", markersize=4, linestyle="none", color="red")
        groups = batches(migs, gap=end * 0.005)
        if len(groups) <= LABELLED:
            for g in groups:
                text = (f"{g[0]['vmid']}→{g[0]['target']}" if len(g) == 1
                        else f"{len(g)} moves")
                ax_cpu.annotate(text, (g[0]["hours"] * scale, 106.0), xytext=(2, -2),
                                textcoords="offset points", fontsize=5, rotation=90,
                                ha="left", va="top", color="dimgrey")
        f = runs[b]
        ok = sum(1 for m in migs if m["ok"])
        failed = len(migs) - ok
        summary = (f"{labels.get(b, b)}: {ok} migrations"
                   + (f" ({failed} failed)" if failed else "")
                   + f", {f.get('cpu_starvation_core_seconds', 0):,.0f} core-s starved, "
                   f"{f.get('node_seconds_above_cpu_max', 0):,.0f} node-s above cpu_max")
        ax_cpu.set_title(summary, fontsize=8, loc="left")
        ax_mem.set_title(f"{labels.get(b, b)}: memory, "
                         f"{f.get('node_seconds_above_memory_max', 0):,.0f} node-s above "
                         "memory_max", fontsize=8, loc="left")
        ax_cpu.set_ylabel("node CPU %", fontsize=8)
        ax_mem.set_ylabel("node memory %", fontsize=8)
        for ax in (ax_cpu, ax_mem):
            ax.tick_params(labelsize=7)
            ax.grid(axis="x", alpha=0.3, linewidth=0.5)
    for ax in axes[-1]:
        ax.set_xlabel(f"{unit} since the start of the run", fontsize=8)
        ax.set_xlim(0, end * scale)
    handles = [Line2D([], [], color=colour[n], linewidth=1.5, label=n) for n in nodes]
    handles += [Line2D([], [], color="grey", marker="v", linestyle="none",
                       label="migration (colour of its target node)"),
                Line2D([], [], color="red", marker="x", linestyle="none",
                       label="failed migration"),
                Line2D([], [], color="grey", linestyle=":",
                       label="threshold (cpu_max, memory_max)")]
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 12), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.28 / fig.get_figheight()))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(str(path), format="png")
    plt.close(fig)
