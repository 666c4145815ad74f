"""PNG of a run: node CPU and memory over time, migrations marked.

matplotlib is imported lazily with the Agg backend so that importing pvesim
never needs a display and stays fast when no plot is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pvesim.cluster import Simulator


def write_png(sim: Simulator, path: str | Path) -> None:
    """Two panels (CPU, memory) per node over simulated hours; successful
    migrations as vertical lines (green), failed ones dashed red; the
    thresholds as dotted lines."""
    import matplotlib  # noqa: PLC0415 — slow import, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    m = sim.metrics
    hours = [(t - m.start) / 3600 for t in m.series_t]
    fig, (ax_cpu, ax_mem) = plt.subplots(2, 1, sharex=True, figsize=(12, 7), dpi=100)
    for name, points in sorted(m.series.items()):
        ax_cpu.plot(hours, [p[0] * 100 for p in points], label=name, linewidth=0.9)
        ax_mem.plot(hours, [p[1] * 100 for p in points], label=name, linewidth=0.9)
    ax_cpu.axhline(m.cpu_max * 100, color="grey", linestyle=":", linewidth=1)
    ax_mem.axhline(m.memory_max * 100, color="grey", linestyle=":", linewidth=1)
    for rec in m.migrations:
        x = (rec.start - m.start) / 3600
        style = (
            {"color": "green", "linestyle": "-"} if rec.ok else {"color": "red", "linestyle": "--"}
        )
        for ax in (ax_cpu, ax_mem):
            ax.axvline(x, alpha=0.5, linewidth=0.8, **style)
    ax_cpu.set_ylabel("node CPU %")
    ax_mem.set_ylabel("node memory %")
    ax_mem.set_xlabel("simulated hours")
    ok = sum(1 for r in m.migrations if r.ok)
    failed = len(m.migrations) - ok
    ax_cpu.set_title(
        f"{sim.scenario.name}: {ok} migrations, {failed} failed "
        f"(green/red lines); starvation {m.starvation_total:.0f} core-s"
    )
    ax_cpu.legend(loc="upper right", fontsize="small")
    ax_cpu.set_ylim(0, 105)
    ax_mem.set_ylim(
        0, max(105, max((p[1] * 100 for pts in m.series.values() for p in pts), default=0) + 5)
    )
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    plt.close(fig)
