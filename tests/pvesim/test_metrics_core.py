"""Metrics: ping-pongs, threshold episodes, JSON export, plot."""

from __future__ import annotations

import json
from pathlib import Path

from pvesim.plot import write_png
from tests.pvesim.simhelp import named


def test_ping_pong_and_episodes(tmp_path: Path) -> None:
    sim = named("cpu-hotspot")
    sim.advance(200)  # vm 101 steps up at 120 s: pve1 above cpu_max
    sim.migrate(102, "pve2", online=True)
    sim.advance(60)
    sim.migrate(102, "pve1", online=True)  # back within the hour
    sim.advance(60)
    sim.migrate(103, "pve3", online=True)
    sim.advance(60)
    m = sim.metrics.to_dict()
    assert m["migrations"]["count"] == 3
    assert m["migrations"]["ping_pongs"] == 1
    ep = m["threshold_episodes"]["cpu"]
    assert ep["count"] >= 1 and ep["max_seconds"] > 0
    out = tmp_path / "m.json"
    sim.metrics.write_json(out)
    assert json.loads(out.read_text())["migrations"]["ping_pongs"] == 1
    png = tmp_path / "p.png"
    write_png(sim, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
