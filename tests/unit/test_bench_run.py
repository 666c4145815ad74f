"""`bench/run`: the quick check's verdict, the full run's report, and the
generated scenarios.

The quick check is fed doctored results (a figure pushed past its
tolerance), never a doctored agent: what is tested is that the comparison
fails when a headline figure regresses and passes when it does not. The
full run is exercised on one scenario for a few simulated minutes, without
ProxLB, scale or plots, to check that every balancer and the bound end up
side by side in report.md.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import make_affinity, make_quick, make_threeday, quick, run_all
from pvesim.cluster import Simulator
from simlab.inprocess import scenario_of

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "run"


def reference() -> dict[str, Any]:
    return dict(json.loads(quick.REFERENCE.read_text()))


def doctored(tmp_path: Path, **figures: float) -> Path:
    """The reference, as a quick.json, with some headline figures replaced."""
    doc = copy.deepcopy(reference())
    doc["headline"].update(figures)
    path = tmp_path / "quick.json"
    path.write_text(json.dumps(doc))
    return path


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RUN), "--quick", "--check", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_reference_itself_passes(tmp_path: Path) -> None:
    got = check(doctored(tmp_path))
    assert got.returncode == 0, got.stderr
    assert "REGRESSED" not in got.stdout


@pytest.mark.parametrize("key", sorted(quick.TOLERANCE))
def test_a_regressed_figure_fails_the_quick_check(tmp_path: Path, key: str) -> None:
    ref = float(reference()["headline"][key])
    got = check(doctored(tmp_path, **{key: quick.allowed(key, ref) + 1.0}))
    assert got.returncode == 1
    assert f"regression: {key}" in got.stderr
    assert "REGRESSED" in got.stdout


def test_within_tolerance_and_improvements_pass(tmp_path: Path) -> None:
    head = reference()["headline"]
    at_limit = {k: quick.allowed(k, float(v)) for k, v in head.items()}
    assert check(doctored(tmp_path, **at_limit)).returncode == 0
    better = check(doctored(tmp_path, node_seconds_above_cpu_max=0.0))
    assert better.returncode == 0
    assert "--update-reference" in better.stdout


def test_regressions_name_only_the_figures_beyond_tolerance() -> None:
    ref = {"cpu_starvation_core_seconds": 0.0, "node_seconds_above_cpu_max": 1000.0,
           "node_seconds_above_memory_max": 0.0, "migrations": 8.0}
    ok = dict(ref, node_seconds_above_cpu_max=1160.0, migrations=11.0)
    assert quick.regressions(ok, ref) == []
    bad = dict(ok, cpu_starvation_core_seconds=61.0, migrations=12.0)
    found = quick.regressions(bad, ref)
    assert [line.split(":")[0] for line in found] == ["cpu_starvation_core_seconds",
                                                      "migrations"]


def test_full_run_puts_balancers_and_bound_side_by_side(tmp_path: Path) -> None:
    rc = run_all.main(["--hours", "0.1", "--scenario", "bitbrains-imbalanced-ha",
                       "--no-scale", "--no-plot", "--no-peers", "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "report.md").read_text()
    assert "## bitbrains-imbalanced-ha" in text
    header = next(line for line in text.splitlines() if line.startswith("| figure |"))
    assert header.split(" | ")[1:4] == ["bound", "no balancer", "pve-balancer (defaults)"]
    assert "ha-auto-rebalance" in header
    bound_doc = json.loads((tmp_path / "bound.json").read_text())
    (row,) = bound_doc["rows"]
    assert set(row["to_bound"]) == {"none", "pve-balancer", "pve-auto-rebalance",
                                    "pve-auto-rebalance-dynamic"}
    quality_doc = json.loads((tmp_path / "quality.json").read_text())
    (q,) = quality_doc["results"]
    base = q["baseline"]
    migrations_row = next(line for line in text.splitlines() if line.startswith("| migrations"))
    assert migrations_row.split(" | ")[2].startswith(f"{base['migrations']['count']:,}")


def test_the_three_day_scenario_runs_three_times_the_hours() -> None:
    assert run_all.DAYS["bitbrains-imbalanced-3day"] == 3
    assert "bitbrains-imbalanced-3day" in run_all.SCENARIOS


@pytest.mark.parametrize("module", [make_affinity, make_threeday, make_quick])
def test_generated_scenarios_match_their_generators(module: Any) -> None:
    assert module.build() == yaml.safe_load(module.OUT.read_text())


def test_affinity_scenario_has_rules_pinned_and_excluded_guests() -> None:
    sim = Simulator(scenario_of(make_affinity.OUT), seed=0)
    assert len(sim.nodes) == 8
    kinds = sorted((r.type, r.affinity or "") for r in sim.rules)
    assert kinds == [("node-affinity", ""), ("node-affinity", ""),
                     ("resource-affinity", "negative"), ("resource-affinity", "positive")]
    guests = list(sim.guests.values())
    assert sum(1 for g in guests if g.local_resources) == 4
    assert sum(1 for g in guests if make_affinity.EXCLUDE_TAG in g.tags) == 5


@pytest.mark.slow
def test_bench_run_quick_passes_against_the_committed_reference(tmp_path: Path) -> None:
    got = subprocess.run([str(RUN), "--quick", "--no-plot", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1200, check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    assert json.loads((tmp_path / "quick.json").read_text())["scenario"] == quick.SCENARIO
