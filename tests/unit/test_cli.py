"""The pve-balancer command line: check-config output, help, status file
rendering, setup wiring, and `plan --json` against `python -m pvesim serve`
over real, verified HTTPS."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pve_balancer import cli
from pve_balancer.paths import PveRoot
from pve_balancer.status import DecisionRecord, NodeRecord, StatusWriter

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        code = cli.main(list(argv), out=out)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue()


def test_check_config_reports_typo_and_bad_value_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_text("# cluster-wide\ncpu_mx: 0.7\nmemory_max: lots\n")
    code, out = run_cli("--pve-root", str(tmp_path), "check-config")
    assert code == 1
    assert f"{path}:2: cpu_mx: unknown key" in out
    assert f"{path}:3: memory_max:" in out and "[error]" in out
    assert "rejected" in out


def test_check_config_warnings_only_exit_zero(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("cpu_max: 0.95\nexclude_nodes: [pve3]\n")
    code, out = run_cli("check-config", str(path))
    assert code == 0
    assert f"{path}:1: cpu_max:" in out and "[warning]" in out
    assert out.strip().endswith("OK with 1 warning(s)")


def test_check_config_missing_default_file_means_defaults(tmp_path: Path) -> None:
    code, out = run_cli("--pve-root", str(tmp_path), "check-config")
    assert code == 0 and "defaults" in out
    code, _ = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert code == 1


def test_help_names_every_command_and_the_files(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for word in ("run", "plan", "status", "check-config", "setup", "balancer.yaml",
                 "pve-balancer.token", "pve-root-ca.pem", "--pve-root", "--api-url"):
        assert word in text
    with pytest.raises(SystemExit):
        cli.main(["plan", "--help"])
    assert "--json" in capsys.readouterr().out


def test_paths_derive_from_the_root() -> None:
    paths = PveRoot(Path("/x/pve"))
    assert paths.config == Path("/x/pve/balancer.yaml")
    assert paths.token == Path("/x/pve/priv/pve-balancer.token")
    assert paths.ca == Path("/x/pve/pve-root-ca.pem")
    assert paths.leader_lock == Path("/x/pve/priv/lock/pve-balancer")
    assert paths.setup_lock == Path("/x/pve/priv/lock/pve-balancer-setup")
    assert paths.members == Path("/x/pve/.members")
    assert paths.status == Path("/x/pve/pve-balancer/status.json")
    assert PveRoot(Path("/x"), Path("/y.yaml")).config == Path("/y.yaml")


def test_status_renders_the_leaders_file_without_api(tmp_path: Path) -> None:
    writer = StatusWriter(PveRoot(tmp_path).status, "pve2")
    writer.became_leader(time.time() - 600)
    writer.update([NodeRecord("pve1", True, 0.83, 0.9, 40 * GIB, 64 * GIB),
                   NodeRecord("pve2", True, 0.41, 0.4, 20 * GIB, 64 * GIB, maintenance=True)],
                  {"cpu_max": 0.8, "memory_max": 0.8})
    writer.note("no action: balanced")
    writer.record(DecisionRecord(time.time() - 60, "cpu", 105, "web5", "pve1", "pve2", "ok"))
    assert writer.maybe_write(time.time())
    code, out = run_cli("--pve-root", str(tmp_path), "status", "--no-live")
    assert code == 0
    assert out.startswith("leader: pve2 since ")
    assert " 83.0%" in out and "maintenance" in out
    assert "cpu       vm 105 pve1 -> pve2: ok" in out
    assert "thresholds: cpu_max 80%" in out
    assert "proactive above 1.2 x mean memory and mean + 10 points" in out
    code, out = run_cli("--pve-root", str(tmp_path), "status", "--no-live", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["status"]["leader"] == "pve2" and doc["live"] is None


def test_status_without_file_says_so(tmp_path: Path) -> None:
    code, out = run_cli("--pve-root", str(tmp_path), "status", "--no-live")
    assert code == cli.STATUS_NO_LEADER and out.startswith("leader: none (no ")


def test_plan_with_missing_token_is_a_clear_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("--pve-root", str(tmp_path), "plan")
    assert code == 1
    assert "cannot read API token file" in capsys.readouterr().err


def test_setup_delegates_to_provision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pve_balancer import provision

    seen: dict[str, Any] = {}

    def fake(root: Path, if_possible: bool = False, remove: bool = False) -> int:
        seen.update(root=root, if_possible=if_possible, remove=remove)
        return 7

    monkeypatch.setattr(provision, "run_setup", fake)
    code, _ = run_cli("--pve-root", str(tmp_path), "setup", "--if-possible")
    assert code == 7 and seen == {"root": tmp_path, "if_possible": True, "remove": False}


# -- against a real `pvesim serve` ------------------------------------------

SCENARIO = {
    "name": "plan-memory-hot",
    "nodes": [{"name": f"pve{i}", "cores": 16, "memory": "64GiB", "base_memory": "4GiB"}
              for i in (1, 2, 3)],
    "guests": (
        [{"vmid": 100 + i, "node": "pve1", "cores": 2, "memory": "4GiB",
          "demand": {"cpu": 0.1, "mem": "4GiB"}} for i in range(1, 13)]
        + [{"vmid": 200 + i, "node": "pve2", "cores": 2, "memory": "4GiB",
            "demand": {"cpu": 0.1, "mem": "4GiB"}} for i in range(1, 10)]
        + [{"vmid": 300 + i, "node": "pve3", "cores": 2, "memory": "4GiB",
            "demand": {"cpu": 0.1, "mem": "4GiB"}} for i in range(1, 10)]),
}


@pytest.fixture
def served(tmp_path: Path) -> Any:
    scenario = tmp_path / "scenario.yaml"
    # Real time from now on: the API's clock is the agent's, as on a node.
    scenario.write_text(yaml.safe_dump({**SCENARIO, "start_time": int(time.time())}))
    conn = tmp_path / "conn.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvesim", "serve", "--scenario", str(scenario),
         "--connection-file", str(conn), "--speed", "1", "--state-dir", str(tmp_path / "state")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not conn.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pvesim serve did not start: {proc.stderr.read()!r}"
                                     if proc.stderr else "pvesim serve did not start")
            time.sleep(0.1)
        time.sleep(0.2)
        yield json.loads(conn.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_plan_json_against_pvesim_serve_over_https(served: dict[str, Any]) -> None:
    node = served["nodes"]["pve1"]
    env = dict(os.environ)
    env.pop("INVOCATION_ID", None)
    env.pop("JOURNAL_STREAM", None)
    result = subprocess.run(
        [sys.executable, "-m", "pve_balancer", "--pve-root", node["pve_root"], "--node", "pve1",
         "--api-url", node["api_url"], "plan", "--json"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    decision = doc["decision"]
    assert decision["mode"] == "memory"
    migration = decision["migration"]
    assert migration["source"] == "pve1" and migration["target"] in ("pve2", "pve3")
    assert migration["source_before"]["mem_fraction"] > 0.8
    assert migration["source_after"]["mem_fraction"] < migration["source_before"]["mem_fraction"]
    assert decision["thresholds"]["memory_max"] == 0.8
    assert {n["name"] for n in doc["nodes"]} == {"pve1", "pve2", "pve3"}
    assert all(n["cpu_ema"] is not None for n in doc["nodes"])
    assert doc["cpu_ready"] is True, "EMAs warmed from the RRD history"
    assert "above memory_max" in decision["reason"]
    # and the human form
    text = subprocess.run(
        [sys.executable, "-m", "pve_balancer", "--pve-root", node["pve_root"], "--node", "pve1",
         "--api-url", node["api_url"], "plan"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("decision: pve1 above memory_max")
    assert "migration: vm " in text.stdout and "NODE" in text.stdout
    assert "not warmed" not in text.stdout


def test_plan_refuses_a_wrong_ca(served: dict[str, Any], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    node = served["nodes"]["pve1"]
    root = tmp_path / "fake-root"
    (root / "priv").mkdir(parents=True)
    (root / "priv" / "pve-balancer.token").write_text(
        (Path(node["pve_root"]) / "priv" / "pve-balancer.token").read_text())
    # a CA that did not sign the server's certificate
    from pvesim.tls import ensure_pki

    other = ensure_pki(tmp_path / "other-pki", ["pve1"])
    (root / "pve-root-ca.pem").write_bytes(Path(other.ca_cert_path).read_bytes())
    code, _ = run_cli("--pve-root", str(root), "--api-url", node["api_url"], "plan")
    assert code == 1
    err = capsys.readouterr().err
    assert f"pve-balancer: cannot verify the PVE API at {node['api_url']}: " in err
    assert "certificate verify failed (unable to get local issuer certificate) " \
        f"against the CA in {root / 'pve-root-ca.pem'}" in err


def test_run_daemon_against_pvesim_serve_and_stop_on_sigterm(served: dict[str, Any]) -> None:
    node = served["nodes"]["pve1"]
    root = Path(node["pve_root"])
    (root / "balancer.yaml").write_text("interval: 2\ndry_run: true\n")
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM",
                                                             "NOTIFY_SOCKET")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pve_balancer", "--pve-root", str(root), "--node", "pve1",
         "--api-url", node["api_url"], "run", "--single"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        status = root / "pve-balancer" / "status.json"
        deadline = time.monotonic() + 60
        # the first cycles read the slow facts, one per cycle; then it decides
        while time.monotonic() < deadline and proc.poll() is None and not (
                status.exists() and "dry run" in status.read_text()):
            time.sleep(0.2)
        assert status.exists(), "the leader publishes its status"
        doc = json.loads(status.read_text())
        assert doc["leader"] == "pve1"
        assert {n["name"] for n in doc["nodes"]} == {"pve1", "pve2", "pve3"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "configuration" in err and "loaded" in err
    assert "dry run, not started: pve1 above memory_max" in err
    assert "stopped after" in err


# -- text from the API, escaped in what the commands print ----------------------

EVIL = "web\nINFO forged line\x1b]0;owned\x07\x1b[2J\u202e"


def unsafe(text: str) -> list[str]:
    import unicodedata

    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf")]


def test_status_escapes_what_came_from_the_api(tmp_path: Path) -> None:
    writer = StatusWriter(PveRoot(tmp_path).status, "pve2")
    writer.became_leader(time.time() - 600)
    writer.update([NodeRecord(f"pve1{EVIL}", True, 0.83, 0.9, 40 * GIB, 64 * GIB)],
                  {"cpu_max": 0.8, "memory_max": 0.8})
    writer.note(f"dry run, not started: migrate vm 101 ({EVIL})")
    writer.record(DecisionRecord(time.time() - 60, f"cpu{EVIL}", 105, EVIL, f"pve1{EVIL}",
                                 f"pve2{EVIL}", f"failed: {EVIL}"))
    assert writer.maybe_write(time.time())
    code, out = run_cli("--pve-root", str(tmp_path), "status", "--no-live")
    assert code == 0 and "\\x1b]0;owned" in out
    assert not unsafe(out), repr(out)
    assert not any(line.startswith("INFO forged") for line in out.splitlines())


def test_plan_escapes_what_came_from_the_api(tmp_path: Path) -> None:
    from tests.unit.https_sim import https_sim
    from tests.unit.test_journal import memory_hot

    with https_sim(tmp_path, memory_hot(EVIL)) as hs:
        code, out = run_cli(*hs.cli_args("plan"))
    assert code == 0 and "migration: vm 10" in out and "\\x1b]0;owned" in out
    assert not unsafe(out), repr(out)
    assert not any(line.startswith("INFO forged") for line in out.splitlines())
