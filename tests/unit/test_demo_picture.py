"""The demo's picture and the labels it takes from the agent's sentences.

Drawn from a synthetic demo run (no processes): the PNG is written, what it
was drawn from survives a save and load unchanged, and a migration's label
names the guest and both nodes as the agent's sentence did.
"""

from __future__ import annotations

import math
from pathlib import Path

from demo.picture import Move, Sample, Story, load, mmss, save, write_picture
from demo.run_demo import move_label


def synthetic() -> tuple[list[Sample], Story]:
    samples = []
    avg = 0.53
    for i in range(0, 116):
        t = float(i)
        hot = 0.88 if 35 <= t < 82 else (0.53 if t < 35 else 0.69)
        avg += (1 - math.exp(-1 / 29.9)) * (hot - avg)
        samples.append(Sample(t, {"pve1": hot, "pve2": 0.28 if t < 82 else 0.47, "pve3": 0.28},
                              {"pve1": 0.46, "pve2": 0.40, "pve3": 0.40},
                              {"pve1": avg, "pve2": 0.28, "pve3": 0.28}))
    story = Story(hotspot_node="pve1", cpu_max=0.8, memory_max=0.8, speed=4.0, hotspot=35.1,
                  relieved=84.6, moves=[Move(79.0, 83.0, "vm 102 (app1) pve1 -> pve2")],
                  killed=(92.9, "pve1"), takeover=(107.3, "pve3"))
    return samples, story


def test_picture_is_written_and_its_input_round_trips(tmp_path: Path) -> None:
    samples, story = synthetic()
    png = tmp_path / "run.png"
    write_picture(png, samples, story)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save(tmp_path / "picture.json", samples, story)
    again_samples, again_story = load(tmp_path / "picture.json")
    assert again_story == story
    assert again_samples == samples


def test_picture_without_relief_or_failover(tmp_path: Path) -> None:
    samples, story = synthetic()
    story.relieved = story.killed = story.takeover = None
    story.moves = []
    write_picture(tmp_path / "run.png", samples[:40], story)
    assert (tmp_path / "run.png").stat().st_size > 0


def test_time_axis_labels() -> None:
    assert [mmss(x) for x in (0, 9.6, 75, 600)] == ["0:00", "0:10", "1:15", "10:00"]


def test_move_label_from_the_agents_sentence() -> None:
    sentence = ("pve1 above cpu_max (0.801 > 0.800): migrate vm 102 (app1) from pve1 to pve2: "
                "cpu 0.80->0.63 on pve1, 0.28->0.45 on pve2 (move 1 of 1 planned); started "
                "task UPID:pve1:00131E86:018BFA22:6B0ED9EA:qmigrate:102:pve-balancer@pve!agent:")
    assert move_label(sentence) == "vm 102 (app1) pve1 -> pve2"
    assert move_label("memory: migrate vm 7 from pveA to pveB; started HA migration") == \
        "vm 7 pveA -> pveB"
    assert move_label("started task UPID:x") == "a guest"
