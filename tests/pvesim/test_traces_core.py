"""Trace replay and the acceptance determinism check on the Bitbrains day."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvesim.cluster import Simulator
from pvesim.demand import TraceDemand
from pvesim.traces import Trace, default_trace_file, load_traces

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scenarios" / "bitbrains-4node-120vm.yaml"
needs_traces = pytest.mark.skipif(
    not default_trace_file().is_file(), reason="Bitbrains trace file not present"
)


def test_trace_interpolates_and_carries_missing_memory() -> None:
    tr = Trace(1, (0.0, 300.0, 600.0), (1.0, 3.0, 3.0), (100.0, 200.0, 200.0), 4, 1000)
    assert tr.at(150) == (2.0, 150.0)
    d = TraceDemand(tr, start=1000.0, offset=0.0)
    assert d.at(1000.0 + 150) == (2.0, 150.0)
    assert d.at(1000.0 + 450) == (3.0, 200.0)


@needs_traces
def test_bitbrains_conversion() -> None:
    tr = load_traces([1])[1]
    assert tr.vcpus == 2 and tr.mem_capacity == 8388608 * 1024
    # first row: 747.1 MHz used of 5852 MHz on 2 cores
    assert tr.cpu_cores[0] == pytest.approx(747.1 / (5852.0 / 2))
    assert tr.mem_bytes[0] == 1308620 * 1024
    assert all(m > 0 for m in tr.mem_bytes)  # zeros were carried over


@needs_traces
@pytest.mark.slow
def test_bitbrains_day_is_deterministic_per_seed() -> None:
    def run(seed: int) -> dict[str, object]:
        sim = Simulator.from_file(BENCH, seed=seed)
        assert len(sim.guests) >= 100 and len(sim.nodes) == 4
        sim.advance(86400)
        return sim.metrics.to_dict()

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c
    assert a["simulated_seconds"] == 86400


@needs_traces
def test_disk_cache_returns_identical_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvesim import traces

    monkeypatch.setenv("PVESIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(traces, "_cache", {})
    parsed = load_traces([3, 5])
    files = sorted(p.name for p in tmp_path.rglob("*.marshal"))
    assert files == ["3.marshal", "5.marshal"]
    monkeypatch.setattr(traces, "_cache", {})
    monkeypatch.setattr(traces, "_parse_vm", None)  # must not parse again
    assert load_traces([3, 5]) == parsed
