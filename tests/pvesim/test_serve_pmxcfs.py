"""`serve --pmxcfs`: each node's /etc/pve is a mount of the pmxcfs emulator,
and a node the simulated cluster cuts off loses quorum there too."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pvesim.control import ControlClient
from pvesim.pmxcfs import fuse_available
from tests.pvesim.test_serve import SCENARIO, wait_for, write_scenario

pytestmark = pytest.mark.fuse


def _members(root: Path) -> dict[str, object]:
    return dict(json.loads((root / ".members").read_text()))


def test_pve_roots_are_pmxcfs_mounts_with_quorum_mirrored(tmp_path: Path,
                                                          spawn_lab: Any) -> None:
    reason = fuse_available()
    if reason:
        pytest.fail(f"needs FUSE as root: {reason}", pytrace=False)
    text = SCENARIO + "balancer_config:\n  cpu_max: 0.75\n"
    lab = spawn_lab(tmp_path, write_scenario(tmp_path, text), "--pmxcfs",
                    "--state-dir", str(tmp_path / "state"))
    try:
        assert lab.conn["pmxcfs"] is True
        roots = {n: Path(info["pve_root"]) for n, info in lab.conn["nodes"].items()}
        ca = Path(lab.conn["ca_cert"]).read_bytes()
        for node, root in roots.items():
            assert os.path.ismount(root)
            assert (root / "pve-root-ca.pem").read_bytes() == ca
            token = (root / "priv" / "pve-balancer.token").read_text()
            assert token == f"{lab.conn['token_id']}={lab.conn['token_secret']}\n"
            assert (root / "priv" / "pve-balancer.token").stat().st_mode & 0o777 == 0o600
            assert (root / "balancer.yaml").read_text() == "cpu_max: 0.75\n"
            assert _members(root)["nodename"] == node
        ctl = ControlClient.from_connection(lab.conn)
        ctl.network("pve3", up=False)
        wait_for("pve3 to lose pmxcfs quorum",
                 lambda: _members(roots["pve3"])["cluster"]["quorate"] == 0)  # type: ignore[index]
        assert _members(roots["pve1"])["cluster"]["quorate"] == 1  # type: ignore[index]
        with pytest.raises(PermissionError):
            (roots["pve3"] / "balancer.yaml").write_text("cpu_max: 0.5\n")
        ctl.network("pve3", up=True)
        wait_for("pve3 to regain quorum",
                 lambda: _members(roots["pve3"])["cluster"]["quorate"] == 1)  # type: ignore[index]
    finally:
        assert lab.stop(signal.SIGTERM) == 0
    assert not any(os.path.ismount(r) for r in roots.values())
