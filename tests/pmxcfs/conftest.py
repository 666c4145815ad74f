from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pvesim.pmxcfs import PmxcfsEmulator
from tests.pmxcfs.support import running_emulator


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[PmxcfsEmulator]:
    """Three nodes, the real 120 s lifetime, a manual clock (advance())."""
    with running_emulator(tmp_path) as emulator:
        yield emulator
