"""Probe parity: `probe.run` on the real pmxcfs and on the emulator (with
`REALISTIC` timing) answers the same in every step except those in
`probe.KNOWN_DIFFERENCES`, which docs/election.md lists with their reasons.

`probe-real.txt` is the real pmxcfs's answer, recorded from a run of the
slow test; the fast test holds the emulator to it without the real cluster,
and the slow test checks that the real pmxcfs still answers that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_pmxcfs import probe

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "probe-real.txt"
DOCS = HERE.parents[1] / "docs" / "election.md"


def _step_ids(diff: dict[str, tuple[str | None, str | None]]) -> set[str]:
    return {key.split()[0] for key in diff}


def test_the_known_differences_are_documented() -> None:
    text = DOCS.read_text()
    for step in probe.KNOWN_DIFFERENCES:
        assert f"`{step}`" in text, f"docs/election.md does not list probe step {step}"


@pytest.mark.fuse
def test_the_emulator_answers_the_probe_as_the_real_pmxcfs_did(tmp_path: Path) -> None:
    real = RECORDED.read_text().splitlines()
    with probe.emulator_target(tmp_path, lifetime=5) as target:
        emulated = probe.run(target, emit=lambda line: None)
    diff = probe.differences(real, emulated)
    assert _step_ids(diff) <= set(probe.KNOWN_DIFFERENCES), diff


@pytest.mark.slow
def test_the_real_pmxcfs_still_answers_as_recorded(tmp_path: Path) -> None:
    with probe.real_target(tmp_path) as target:
        real = probe.run(target)
    diff = probe.differences(RECORDED.read_text().splitlines(), real)
    assert diff == {}, diff
