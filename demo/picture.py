"""The demo's picture: what a person watching the demo saw, in one PNG.

Drawn from the demo's own observations, in the demo's time (mm:ss since it
started, the same clock as the console lines): node CPU and memory as PVE's
API published them, the hotspot node's one-minute CPU average (the figure
the leader acts on), and the story's turns marked and labelled: the hotspot
until its relief, each migration (start to end, named), the leader's agent
killed and the standby that took over. Node lines use one palette, events
another, so a migration is never mistaken for a node.

matplotlib is imported only when a picture is drawn (Agg backend, no
display needed). The demo also saves what it drew from (`picture.json`), so
`python demo/picture.py picture.json run.png` draws it again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NODE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#8c564b", "#17becf")
"""Blue, orange, green, brown, teal: nodes. Events use black (migrations),
red (hotspot, kill) and purple (takeover), which no node has."""

MIGRATION = "black"
HOTSPOT = "#d62728"
TAKEOVER = "#9467bd"


@dataclass
class Sample:
    """One poll of the cluster: seconds since the demo started, published
    CPU and memory fractions per node, and the one-minute CPU averages."""

    t: float
    cpu: dict[str, float]
    mem: dict[str, float]
    cpu_avg: dict[str, float]


@dataclass
class Move:
    start: float
    end: float | None
    label: str


@dataclass
class Story:
    """The turns of the demo, in seconds since it started."""

    hotspot_node: str
    cpu_max: float
    memory_max: float
    speed: float
    hotspot: float | None = None
    relieved: float | None = None
    moves: list[Move] = field(default_factory=list)
    killed: tuple[float, str] | None = None
    takeover: tuple[float, str] | None = None


def mmss(seconds: float) -> str:
    """`75` -> `1:15`, for the time axis."""
    s = max(0, round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def write_picture(path: str | Path, samples: list[Sample], story: Story) -> None:
    import matplotlib  # noqa: PLC0415 - slow import, only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, MultipleLocator  # noqa: PLC0415

    nodes = sorted({n for s in samples for n in s.cpu})
    colour = {n: NODE_COLOURS[i % len(NODE_COLOURS)] for i, n in enumerate(nodes)}
    ts = [s.t for s in samples]
    fig, (ax_cpu, ax_mem) = plt.subplots(2, 1, sharex=True, figsize=(12, 7.5), dpi=100,
                                         gridspec_kw={"height_ratios": [3, 2]})
    for n in nodes:
        ax_cpu.plot(ts, [100 * s.cpu.get(n, 0.0) for s in samples], color=colour[n],
                    linewidth=1.6, label=f"{n} CPU (published)")
        ax_mem.plot(ts, [100 * s.mem.get(n, 0.0) for s in samples], color=colour[n],
                    linewidth=1.6, label=n)
    hot = story.hotspot_node
    ax_cpu.plot(ts, [100 * s.cpu_avg.get(hot, 0.0) for s in samples], color=colour.get(hot),
                linewidth=1.2, linestyle="--",
                label=f"{hot} 1-min average (what the leader acts on)")
    ax_cpu.axhline(100 * story.cpu_max, color="grey", linestyle=":", linewidth=1.2)
    ax_cpu.text(0.005, 100 * story.cpu_max + 1, f"cpu_max {100 * story.cpu_max:.0f}%",
                transform=ax_cpu.get_yaxis_transform(), color="dimgrey", fontsize=8)
    ax_mem.axhline(100 * story.memory_max, color="grey", linestyle=":", linewidth=1.2)
    ax_mem.text(0.005, 100 * story.memory_max + 1,
                f"memory_max {100 * story.memory_max:.0f}%",
                transform=ax_mem.get_yaxis_transform(), color="dimgrey", fontsize=8)
    end = ts[-1] if ts else 1.0

    def top(x: float, text: str, colour_: str, row: int) -> None:
        """A label at the top of the CPU panel, one row per event, on the
        side of its line that has room."""
        right = x > 0.6 * end
        ax_cpu.annotate(text, xy=(x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-3 if right else 3, -6 - 12 * row), textcoords="offset points",
                        fontsize=8, color=colour_, ha="right" if right else "left", va="top",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})

    if story.hotspot is not None:
        stop = story.relieved if story.relieved is not None else end
        for ax in (ax_cpu, ax_mem):
            ax.axvspan(story.hotspot, stop, color=HOTSPOT, alpha=0.08, linewidth=0)
        took = "" if story.relieved is None else f", relieved after {stop - story.hotspot:.0f} s"
        top(story.hotspot, f"hotspot: {hot} above cpu_max{took}", HOTSPOT, 0)
    for i, m in enumerate(story.moves):
        for ax in (ax_cpu, ax_mem):
            ax.axvline(m.start, color=MIGRATION, linewidth=1.2)
            if m.end is not None:
                ax.axvspan(m.start, m.end, color=MIGRATION, alpha=0.12, linewidth=0)
        top(m.start, f"migration: {m.label}", MIGRATION, 1 + i)
    if story.killed is not None:
        t, node = story.killed
        for ax in (ax_cpu, ax_mem):
            ax.axvline(t, color=HOTSPOT, linewidth=1.2, linestyle="--")
        top(t, f"leader's agent on {node} killed", HOTSPOT, 1 + len(story.moves))
    if story.takeover is not None:
        t, node = story.takeover
        for ax in (ax_cpu, ax_mem):
            ax.axvline(t, color=TAKEOVER, linewidth=1.2, linestyle="-.")
        after = "" if story.killed is None else f" {t - story.killed[0]:.0f} s after the kill"
        top(t, f"failover: {node} leads{after}", TAKEOVER, 2 + len(story.moves))
    ax_cpu.set_ylabel("node CPU %")
    ax_mem.set_ylabel("node memory %")
    ax_cpu.set_ylim(0, 125)
    ax_cpu.set_yticks(range(0, 101, 20))
    ax_mem.set_ylim(0, 100)
    ax_mem.set_xlim(0, end)
    step = 15 if end <= 240 else 30 if end <= 600 else 60
    ax_mem.xaxis.set_major_locator(MultipleLocator(step))
    ax_mem.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: mmss(x)))
    ax_mem.set_xlabel(f"time since the demo started (min:s); the simulated clock runs "
                      f"{story.speed:g}x faster")
    moves = f"{len(story.moves)} migration{'' if len(story.moves) == 1 else 's'}"
    relief = "hotspot relieved" if story.relieved is not None else "hotspot not relieved"
    ax_cpu.set_title(f"pve-balancer demo: {moves}, {relief}")
    ax_cpu.legend(loc="lower right", fontsize=8, ncol=2)
    ax_mem.legend(loc="lower right", fontsize=8, ncol=len(nodes))
    for ax in (ax_cpu, ax_mem):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    plt.close(fig)


def save(path: str | Path, samples: list[Sample], story: Story) -> None:
    """What `write_picture` draws from, as JSON."""
    doc = {"story": asdict(story), "samples": [asdict(x) for x in samples]}
    Path(path).write_text(json.dumps(doc) + "\n", encoding="utf-8")


def load(path: str | Path) -> tuple[list[Sample], Story]:
    doc: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    st = dict(doc["story"])
    st["moves"] = [Move(**m) for m in st["moves"]]
    for key in ("killed", "takeover"):
        st[key] = None if st[key] is None else (float(st[key][0]), str(st[key][1]))
    return [Sample(**x) for x in doc["samples"]], Story(**st)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python demo/picture.py PICTURE.json OUT.png")
    write_picture(sys.argv[2], *load(sys.argv[1]))
