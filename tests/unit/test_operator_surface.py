"""What an operator and a monitoring system get from the command line:
`status` exit codes, a clean stop that says at once there is no leader,
`plan` that is reproducible and waits where the agent waits, no traceback
into a closed pipe, `pve-balancer` on the venv's PATH, and a man page that
says what was measured."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pve_balancer import cli
from pve_balancer.agent import Agent
from pve_balancer.config import Config, ConfigSource
from pve_balancer.env import PveEnvironment
from pve_balancer.leadership import AlwaysLeader
from pve_balancer.paths import PveRoot
from pve_balancer.status import NodeRecord, StatusWriter, read_status
from pvesim.clock import VirtualClock
from simlab.inprocess import WARMUP, attach_client, make_lab
from tests.conftest import guest_spec, nodes_spec
from tests.unit.https_sim import https_sim
from tests.unit.test_cli import run_cli

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def memory_hot() -> dict[str, Any]:
    """pve1 at ~85 % memory: any of VMs 101-105 relieves it."""
    guests = [guest_spec(v, "pve1", cpu=0.1, cores=2, mem="10GiB", memory="10GiB")
              for v in range(101, 106)]
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "memory-hot", "nodes": nodes_spec(2), "guests": guests}


def very_hot() -> dict[str, Any]:
    """pve1 at ~92 % memory: after one move it is still far above the
    cluster mean, so a second (proactive) move would follow once the
    statistics show the first."""
    guests = [guest_spec(v, "pve1", cpu=0.1, cores=2, mem="11GiB", memory="11GiB")
              for v in range(101, 106)]
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "very-hot", "nodes": nodes_spec(3), "guests": guests}


# -- status exit codes ---------------------------------------------------------


def publish(root: Path, updated: float) -> None:
    writer = StatusWriter(PveRoot(root).status, "pve2")
    writer.became_leader(updated - 600)
    writer.update([NodeRecord("pve1", True, 0.5, 0.5, 20 * GIB, 64 * GIB)],
                  {"cpu_max": 0.8, "memory_max": 0.8})
    writer.note("no action: balanced")
    assert writer.maybe_write(updated)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_exit_codes_tell_monitoring_what_is_wrong(tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, out = run_cli("--pve-root", str(root), "status", "--no-live")
    assert (code, out.splitlines()[0]) == (
        2, f"leader: none (no {PveRoot(root).status}; is any agent running?)")
    publish(root, time.time())
    code, out = run_cli("--pve-root", str(root), "status", "--no-live")
    assert code == 0 and out.startswith("leader: pve2 since ")
    code, out = run_cli("--pve-root", str(root), "status", "--no-live", "--json")
    assert code == 0 and json.loads(out)["state"] == "ok"
    # the live sample fails: this node cannot confirm what it sees
    url = f"https://127.0.0.1:{closed_port()}"
    code, out = run_cli("--pve-root", str(root), "--api-url", url, "status")
    assert code == 3 and "live sample unavailable: no usable API token" in out
    publish(root, time.time() - 600)
    code, out = run_cli("--pve-root", str(root), "status", "--no-live")
    assert code == 1 and "STALE" in out.splitlines()[0]
    code, out = run_cli("--pve-root", str(root), "--api-url", url, "status", "--json")
    assert code == 1 and json.loads(out)["state"] == "stale", "the leader's state comes first"


def test_status_exit_codes_are_in_the_man_page_and_readme() -> None:
    man = (REPO / "man" / "pve-balancer.8").read_text()
    section = man[man.index(".SH EXIT STATUS"):man.index(".SH EXAMPLES")]
    for code in (cli.STATUS_OK, cli.STATUS_STALE, cli.STATUS_NO_LEADER,
                 cli.STATUS_API_UNREACHABLE):
        assert f".B {code}\n" in section
    assert (cli.STATUS_OK, cli.STATUS_STALE, cli.STATUS_NO_LEADER,
            cli.STATUS_API_UNREACHABLE) == (0, 1, 2, 3), "Nagios: OK, WARNING, CRITICAL, UNKNOWN"
    readme = (REPO / "README.md").read_text()
    assert "| 3 | UNKNOWN |" in readme and "| 2 | CRITICAL |" in readme


# -- a clean stop ---------------------------------------------------------------


def test_a_clean_stop_says_at_once_that_there_is_no_leader(tmp_path: Path) -> None:
    scenario = {**memory_hot(), "start_time": time.time() - WARMUP}
    lab = make_lab(scenario, Config(seed=1, dry_run=True), status_dir=tmp_path)
    lab.run(25)  # the first four cycles read the slow facts, the fifth decides
    status = PveRoot(tmp_path).status
    assert (read_status(status) or {}).get("leader") == "pve1"
    code, _ = run_cli("--pve-root", str(tmp_path), "status", "--no-live")
    assert code == 0
    lab.daemon.shutdown()  # what SIGTERM ends in
    doc = read_status(status) or {}
    assert doc.get("leader") is None and doc.get("released_by") == "pve1"
    assert doc.get("decisions"), "the history stays for the next leader"
    code, out = run_cli("--pve-root", str(tmp_path), "status", "--no-live")
    assert code == 2
    assert out.startswith("leader: none (pve1 stopped at "), out


def test_an_agent_that_no_longer_leads_leaves_the_status_alone(tmp_path: Path) -> None:
    scenario = {**memory_hot(), "start_time": time.time() - WARMUP}
    lab = make_lab(scenario, Config(seed=1, dry_run=True), status_dir=tmp_path)
    lab.run(25)  # the first four cycles read the slow facts, the fifth decides
    status = PveRoot(tmp_path).status
    before = status.read_bytes()
    lab.agent.env.election.release()  # lost the lock without noticing yet
    lab.agent.release()
    assert status.read_bytes() == before, "another node may lead by now"


def test_process_sigterm_then_status_says_no_leader(tmp_path: Path) -> None:
    with https_sim(tmp_path, memory_hot(), config="interval: 2\ndry_run: true\n") as hs:
        env = {k: v for k, v in os.environ.items()
               if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pve_balancer", *hs.cli_args("run", "--single")],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        status = PveRoot(hs.root).status
        try:
            deadline = time.monotonic() + 60
            while read_status(status) is None and proc.poll() is None and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            code, out = run_cli(*hs.cli_args("status"))
            assert code == 0, out
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        code, out = run_cli(*hs.cli_args("status"))
    assert code == 2 and out.startswith("leader: none (pve1 stopped at "), out


# -- plan -------------------------------------------------------------------------


def test_plan_picks_the_same_guest_every_time_by_default(tmp_path: Path) -> None:
    with https_sim(tmp_path, memory_hot()) as hs:
        chosen = set()
        for _ in range(5):
            code, out = run_cli(*hs.cli_args("plan", "--json"))
            assert code == 0
            migration = json.loads(out)["decision"]["migration"]
            chosen.add(migration["vmid"])
    assert len(chosen) == 1, f"five plans, {len(chosen)} different guests: {chosen}"


def test_plan_right_after_a_migration_waits_as_the_agent_does() -> None:
    lab = make_lab(very_hot(), Config(seed=1))
    assert lab.run_until(lambda: any(f.get("result") == "ok" for f in lab.fields), 300)
    ended = lab.sim.now
    assert lab.started() and len(lab.migrate_posts()) == 1
    # a plan by another process, right now: it did not follow that move
    env = PveEnvironment(node="pve1", connect=lambda: attach_client(lab.sim, "pve1"),
                         election=AlwaysLeader(), clock=VirtualClock(lab.sim))
    plan = Agent(env, ConfigSource.fixed(Config(seed=1))).plan()
    assert plan.decision.migration is None, plan.decision.reason
    assert re.match(r"waiting \d+ s for node statistics to refresh after the migration of "
                    r"vm 10\d", plan.decision.reason), plan.decision.reason
    # and the agent itself, at the same moment, waits too
    sentence = lab.run(5)[0]
    assert sentence.startswith("waiting ") and lab.sim.now - ended <= 5
    # once the statistics are fresh, a plan proposes what is left
    lab.sim.advance(30)
    env = PveEnvironment(node="pve1", connect=lambda: attach_client(lab.sim, "pve1"),
                         election=AlwaysLeader(), clock=VirtualClock(lab.sim))
    later = Agent(env, ConfigSource.fixed(Config(seed=1))).plan()
    assert "waiting" not in later.decision.reason, later.decision.reason


# -- a closed pipe -------------------------------------------------------------------


def closed_stdout(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the command with its stdout a pipe nobody reads (`| head` that
    already ended)."""
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    proc = subprocess.Popen([sys.executable, "-m", "pve_balancer", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err)


def test_plan_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    with https_sim(tmp_path, memory_hot()) as hs:
        result = closed_stdout(hs.cli_args("plan"))
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, \
        result.stderr
    assert result.returncode == 141


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    publish(tmp_path, time.time())
    result = closed_stdout(["--pve-root", str(tmp_path), "status", "--no-live"])
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, \
        result.stderr
    assert result.returncode == 141


# -- the venv --------------------------------------------------------------------------


def test_bootstrap_puts_pve_balancer_on_the_venv_path(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "dev" / "bootstrap")], check=True, timeout=600,
                   capture_output=True)
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    version = subprocess.run(["pve-balancer", "--version"], cwd=tmp_path, env=env, check=False,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    expected = subprocess.run([sys.executable, "-m", "pve_balancer", "--version"], cwd=REPO,
                              capture_output=True, text=True, check=True, timeout=60)
    assert version.stdout == expected.stdout
    (tmp_path / "balancer.yaml").write_text("cpu_max: 0.75\n")
    check = subprocess.run(["pve-balancer", "--pve-root", str(tmp_path), "check-config"],
                           cwd=tmp_path, env=env, check=False, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0 and "OK" in check.stdout, check


# -- the man page says what was measured -------------------------------------------------


def test_the_man_page_promises_only_what_was_measured() -> None:
    man = (REPO / "man" / "pve-balancer.8").read_text()
    text = re.sub(r"\s+", " ", man)
    assert "120 second lifetime at most" not in text
    assert "smallest set of live migrations" not in text
    assert "one live migration at a time" in text
    # the figures of docs/election.md: lifetime + one retry after the last renew
    election = (REPO / "docs" / "election.md").read_text()
    assert "a standby leads 120\u2013126 s after the last renew" in re.sub(r"\s+", " ",
                                                                             election)
    assert "120 to 126 seconds after its last lock renew" in text
    assert "within one retry interval" in text
