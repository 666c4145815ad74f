"""Where the project's shared input data lives: the `shared/` directory that
sits beside the checkout (PVE's API schema, the Bitbrains traces).
`PVE_BALANCER_SHARED` overrides it for checkouts laid out differently."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR = Path(
    os.environ.get("PVE_BALANCER_SHARED")
    or Path(__file__).resolve().parents[2] / "shared"
)
PVE_API_SCHEMA = SHARED_DIR / "pve-api" / "apidata-pve-9.1.json.gz"
