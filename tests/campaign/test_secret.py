"""The API token secret never appears in anything the agent writes.

In process (default run): the agent's journal through the shipped
filters, while the API answers with every fault kind at once, and while a
bug of our own (the policy raising, with the client's request context on
the stack) forces the "cycle failed" path with its traceback, which must be
logged once per episode and carry no secret.

With real processes (slow tier): `pve-balancer -vv run` agents against
`pvesim serve --pmxcfs` under API faults (every request logged at
`-vv`), `plan`, `status` and `check-config`, and an agent whose token the
API refuses (a 401 names the token id and the file, never the secret).
Every byte of stdout, stderr and status.json is searched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pve_balancer import agent as agent_module
from pve_balancer.config import Config
from simlab.inprocess import AGENT_TOKEN, InProcessLab, simulator
from tests.campaign.inprocess_campaign import Journal
from tests.campaign.process_campaign import secret_of, start_lab
from tests.integration.lab import REPO, ProcessLab, agent_env, wait_for
from tests.scenarios import scenario_path


def test_a_forced_traceback_is_logged_once_and_carries_no_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(scenario_path("lab-three-agents"), seed=3)
    lab = InProcessLab.attach(sim, Config(seed=1, interval=5))
    journal = Journal(sim)
    secret = sim.tokens[AGENT_TOKEN]
    real_decide = agent_module.decide
    broken = {"on": False}

    def decide(*args: object, **kwargs: object) -> object:
        if broken["on"]:
            raise RuntimeError(f"a bug of our own, next to {lab.client.url}")
        return real_decide(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(agent_module, "decide", decide)
    with journal.capture():
        lab.run(60)
        broken["on"] = True
        lab.run(300)
        broken["on"] = False
        lab.run(60)
    text = journal.text()
    failed = [s for _, s in lab.sentences if s.startswith("cycle failed")]
    assert failed, "the bug did not reach the cycle's catch-all"
    tracebacks = [r for r in journal.records if "Traceback" in r.text]
    assert len(tracebacks) == 1, text
    assert secret not in text
    assert len(journal.warnings()) <= 2, text


def test_every_fault_at_once_leaves_no_secret_in_the_journal(tmp_path: Path) -> None:
    sim = simulator(scenario_path("lab-three-agents"), seed=4, warmup=60)
    lab = InProcessLab.attach(sim, Config(seed=1, interval=5), faults_seed=4,
                              status_dir=tmp_path)
    assert lab.faults is not None
    from pvesim.faults import KINDS

    for kind in KINDS:
        spec: dict[str, object] = {"kind": kind, "probability": 0.15}
        if kind == "missing_fields":
            spec["fields"] = ("mem", "status", "upid")
        lab.faults.add(**spec)  # type: ignore[arg-type]
    journal = Journal(sim)
    with journal.capture():
        lab.run(1800)
    assert journal.warnings(), "the faults were never noticed"
    status = (tmp_path / "pve-balancer" / "status.json").read_text()
    assert lab.node in status
    secret = sim.tokens[AGENT_TOKEN]
    assert secret not in journal.text()
    assert secret not in status


# ------------------------------------------------------------ real processes


def _cli(lab: ProcessLab, node: str, *args: str, timeout: float = 60.0,
         token_file: Path | None = None) -> str:
    info = lab.conn["nodes"][node]
    cmd = [sys.executable, "-m", "pve_balancer", "-vv", "--pve-root", info["pve_root"],
           "--node", node, "--api-url", info["api_url"], *args]
    done = subprocess.run(cmd, cwd=REPO, env=agent_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done.stdout + done.stderr


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ProcessLab]:
    started = start_lab(tmp_path)
    yield started
    started.stop()


@pytest.mark.slow
@pytest.mark.fuse
def test_no_output_of_real_processes_carries_the_secret(lab: ProcessLab,
                                                        tmp_path: Path) -> None:
    secret = secret_of(lab)
    outputs: dict[str, str] = {}
    for kind in ("http_error", "timeout", "malformed_json", "truncated_json",
                 "connection_reset"):
        # about one request in six fails: often enough that every error
        # path writes, rare enough that a fail-closed agent still gets a
        # cycle with every fact fresh and migrates
        lab.ctl.add_fault(kind=kind, probability=0.035, seconds=3.0)
    info = lab.conn["nodes"]["pve1"]
    cmd = [sys.executable, "-m", "pve_balancer", "-vv", "--pve-root", info["pve_root"],
           "--node", "pve1", "--api-url", info["api_url"], "run",
           *lab.timing.agent_args()]
    log_path = tmp_path / "agent-vv.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=agent_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for("a migration", lambda: lab.migrate_posts(), 180, step=0.5)
            time.sleep(10)
            outputs["plan"] = _cli(lab, "pve2", "plan")
            outputs["status"] = _cli(lab, "pve2", "status")
            outputs["check-config"] = _cli(lab, "pve2", "check-config",
                                           info["pve_root"] + "/balancer.yaml")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    outputs["run -vv"] = log_path.read_text(errors="replace")
    status = Path(info["pve_root"]) / "pve-balancer" / "status.json"
    outputs["status.json"] = status.read_text(errors="replace") if status.exists() else ""
    assert "GET" in outputs["run -vv"], "the -vv run logged no requests"
    # A token the API refuses: the 401 message names the token, not its secret.
    lab.ctl.clear_faults()
    wrong_root = tmp_path / "wrong-root"
    (wrong_root / "priv").mkdir(parents=True)
    for name in ("pve-root-ca.pem", "balancer.yaml"):
        src = Path(info["pve_root"]) / name
        if src.exists():
            (wrong_root / name).write_bytes(src.read_bytes())
    wrong = "0badc0de-1111-2222-3333-444455556666"
    token = wrong_root / "priv" / "pve-balancer.token"
    token.write_text(f"{lab.conn['token_id']}={wrong}\n")
    os.chmod(token, 0o600)
    refused = subprocess.run(
        [sys.executable, "-m", "pve_balancer", "-vv", "--pve-root", str(wrong_root),
         "--node", "pve1", "--api-url", info["api_url"], "plan"],
        cwd=REPO, env=agent_env(), capture_output=True, text=True, timeout=60, check=False)
    outputs["plan with a refused token"] = refused.stdout + refused.stderr
    assert "refused" in outputs["plan with a refused token"], outputs
    assert lab.conn["token_id"] in outputs["plan with a refused token"], outputs
    leaked = [name for name, text in outputs.items() if secret in text or wrong in text]
    assert leaked == [], f"the token secret appears in {leaked}"
