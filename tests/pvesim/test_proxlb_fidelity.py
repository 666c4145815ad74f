"""ProxLB 2.3.0, unmodified, from PyPI, against `python -m pvesim serve`.

A real PVE client that nobody here wrote is the best test of whether the
simulator answers like PVE: ProxLB indexes fields the schema does not list
(`disk`/`maxdisk` in `/nodes`), reads pools one by one, the PSI fields of
every guest's `rrddata`, the HA status, checks its token's privileges, then
migrates (VMs live, containers in restart mode, HA guests through the HA
stack) and follows each task to its end. The test builds ProxLB's own
virtualenv (dev/peers-venv, pinned), serves a memory-imbalanced cluster in
real time, runs ProxLB once with verification on against the lab's CA, and
checks that it exits 0 without an error line and that its migrations reached
the simulator and completed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pvesim.control import ControlClient
from tests.pvesim.conftest import REPO, start_lab

pytestmark = pytest.mark.slow

TOKEN = "proxlb@pve!balancer"

SCENARIO = """
name: proxlb-fidelity
nodes:
  - {name: pve1, cores: 16, memory: 64G}
  - {name: pve2, cores: 16, memory: 64G}
  - {name: pve3, cores: 16, memory: 64G}
guests:
  - {vmid: 100, node: pve1, name: web1, cores: 2, memory: 12G, pool: prod,
     demand: {cpu: 0.5, mem: 10G}}
  - {vmid: 101, node: pve1, name: web2, cores: 2, memory: 12G, pool: prod, ha: true,
     demand: {cpu: 0.5, mem: 10G}}
  - {vmid: 102, node: pve1, name: db, cores: 4, memory: 16G, demand: {cpu: 1.0, mem: 14G}}
  - {vmid: 103, node: pve1, name: cache, cores: 2, memory: 8G, demand: {cpu: 0.3, mem: 7G}}
  - {vmid: 200, node: pve1, name: ct1, type: lxc, cores: 1, memory: 8G,
     demand: {cpu: 0.2, mem: 7G}}
  - {vmid: 104, node: pve2, name: small, cores: 1, memory: 2G, demand: {cpu: 0.1, mem: 1G}}
pools: {prod: [100, 101]}
tokens:
  - {id: "pve-balancer@pve!agent", privileges: [Sys.Audit, VM.Audit, VM.Migrate]}
  - {id: "root@pam!admin", privileges: [Sys.Audit, VM.Audit, VM.Migrate, Datastore.Audit]}
  # what ProxLB asks for, and Pool.Audit so that its pool affinity reads the pools
  - {id: "proxlb@pve!balancer",
     privileges: [Datastore.Audit, Sys.Audit, VM.Audit, VM.Migrate, Pool.Audit]}
"""


def proxlb_python() -> Path:
    subprocess.run([str(REPO / "dev" / "peers-venv")], check=True, cwd=REPO,
                   capture_output=True, timeout=900)
    return REPO / ".venv-bench" / "bin" / "python"


def test_proxlb_runs_unmodified_against_pvesim_serve(tmp_path: Path) -> None:
    python = proxlb_python()
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    lab = start_lab(tmp_path / "lab", scenario, "--speed", "1", "--seed", "0")
    try:
        conn = lab.conn
        user, _, name = TOKEN.partition("!")
        config = {
            "proxmox_api": {"hosts": [lab.host_port()], "user": user, "token_id": name,
                            "token_secret": conn["tokens"][TOKEN], "ssl_verification": True,
                            "timeout": 30},
            "balancing": {"enable": True, "balance_types": ["vm", "ct"], "method": "memory"},
            "service": {"daemon": False},
        }
        cfg = tmp_path / "proxlb.yaml"
        cfg.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))}
        env["REQUESTS_CA_BUNDLE"] = conn["ca_cert"]
        done = subprocess.run([str(python), "-m", "proxlb", "-c", str(cfg)], check=False, env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        bad = [ln for ln in output.splitlines()
               if any(w in ln for w in (" ERROR ", " CRITICAL ", "Traceback", "KeyError"))]
        assert bad == [], output
        assert "All guests processed and migrations completed" in output, output

        control = ControlClient.from_connection(conn)
        entries = control.requests(0)["entries"]
        mine = [e for e in entries if e["token_id"] == TOKEN]
        paths = {e["path"] for e in mine}
        # what a real client reads: nodes with disk fields, pools one by one,
        # guest RRD with PSI, HA status; every answer a success
        assert "/nodes" in {p.removeprefix("/api2/json") for p in paths}
        assert any(p.endswith("/pools/prod") for p in paths), sorted(paths)
        assert any(p.endswith("/rrddata") and "/qemu/" in p for p in paths)
        assert [e for e in mine if e["status"] != 200] == []
        posts = [e for e in mine if e["method"] == "POST" and e["path"].endswith("/migrate")]
        assert posts, output
        assert {p["path"].split("/")[-3] for p in posts} >= {"qemu"}
        migrations = control.metrics()["migrations"]
        moved = {m["vmid"] for m in migrations["list"] if m["ok"]}
        posted = {int(p["path"].split("/")[-2]) for p in posts}
        assert posted <= moved, (posted, moved)
        assert migrations["failed"] == 0
    finally:
        lab.stop()
