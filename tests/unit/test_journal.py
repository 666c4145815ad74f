"""What the journal tells an operator about problems.

A problem that lasts is one line when it starts and one when it ends, with
a counter, not a line per cycle; the line names the cause and what to do
(the token and `pve-balancer setup`, the CA file, the URL); text from the
API never forges a line or reaches a terminal as an escape sequence. The
in-process tests run the real agent and daemon against the simulator
(`simlab`) or over real HTTPS (`https_sim`); the process tests run
`pve-balancer run` and read its stderr as journald would get it.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pve_balancer import cli, journal
from pve_balancer.agent import Agent, CycleResult
from pve_balancer.config import Config, ConfigSource
from pve_balancer.daemon import Daemon
from pve_balancer.display import display_safe, display_safe_block
from pve_balancer.env import PveEnvironment
from pve_balancer.episodes import HEARTBEAT, CycleJournal
from pve_balancer.leadership import AlwaysLeader
from pve_balancer.notify import Notifier
from pve_balancer.paths import PveRoot
from pve_balancer.pve import PveClient
from pvesim.clock import VirtualClock
from pvesim.cluster import Simulator
from pvesim.scenario import Scenario
from pvesim.tls import ensure_pki
from simlab.inprocess import AGENT_TOKEN, make_lab
from tests.conftest import guest_spec, nodes_spec
from tests.term_start import READING, first_decision
from tests.unit.https_sim import HttpsSim, https_sim

REPO = Path(__file__).resolve().parents[2]

BALANCED = {"name": "balanced", "nodes": nodes_spec(2),
            "guests": [guest_spec(101, "pve1"), guest_spec(201, "pve2")]}

EVIL = "web\nINFO migrated vm 999 (db) pve1 → pve2 in 1 s (OK)\x1b]0;owned\x07\x1b[2J\u202e"
"""A guest name that would forge a journal line, retitle the terminal,
clear the screen and reverse the text after it."""


def memory_hot(name: str = "") -> dict[str, Any]:
    """pve1 at ~85 % memory: any of VMs 101-105 relieves it (named `name`)."""
    guests = [guest_spec(v, "pve1", cpu=0.1, cores=2, mem="10GiB", memory="10GiB")
              for v in range(101, 106)]
    if name:
        for g in guests:
            g["name"] = name
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "memory-hot", "nodes": nodes_spec(2), "guests": guests}


def problems(caplog: pytest.LogCaptureFixture, contains: str = "") -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno >= logging.WARNING and contains in r.getMessage()]


def messages(caplog: pytest.LogCaptureFixture, contains: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if contains in r.getMessage()]


def unsafe_chars(text: str) -> list[str]:
    return [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
            and ch != "\n"]


# -- episodes ---------------------------------------------------------------


def test_an_api_outage_is_one_warning_and_one_line_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    lab = make_lab(BALANCED, Config(seed=1), faults=True)
    assert lab.faults is not None
    lab.run(10)
    reset = lab.faults.add(kind="connection_reset", method="GET", path="/cluster/resources",
                           count=48)
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        lab.run(60 * 5)
    assert reset.fired == 48 or lab.faults.faults == []
    failed = [s for _, s in lab.sentences if "cannot reach the PVE API" in s]
    assert len(failed) == 48, "every failed cycle still says so (status, STATUS=)"
    said = problems(caplog)
    assert [r.getMessage() for r in said] == [failed[0]], "one line for the whole outage"
    assert messages(caplog, "reachable again") == [
        "PVE API reachable again after 4 min, 48 cycles failed"]
    assert messages(caplog, "no action"), "the first good cycle is logged as usual"


def test_a_new_cause_within_an_outage_is_said_once_more(
        caplog: pytest.LogCaptureFixture) -> None:
    lab = make_lab(BALANCED, Config(seed=1), faults=True)
    assert lab.faults is not None
    lab.run(10)
    lab.faults.add(kind="connection_reset", method="GET", path="/cluster/resources", count=6)
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        lab.run(6 * 5)
        lab.faults.add(kind="http_error", method="GET", path="/cluster/resources", status=500,
                       message="proxy loop", count=6)
        lab.run(10 * 5)
    said = [r.getMessage() for r in problems(caplog)]
    assert len(said) == 2, said
    assert "reset by peer" in said[0]
    assert "HTTP 500 proxy loop" in said[1] and "(for 30 s, 7 cycles)" in said[1]
    assert messages(caplog, "reachable again") == [
        "PVE API reachable again after 60 s, 12 cycles failed"]


def test_our_own_bug_is_one_error_with_its_traceback_per_episode(
        caplog: pytest.LogCaptureFixture) -> None:
    sim = Simulator(Scenario.from_dict(BALANCED))
    calls = []

    def connect() -> PveClient:
        calls.append(1)
        raise ZeroDivisionError("a bug of ours")

    clock = VirtualClock(sim)
    env = PveEnvironment(node="pve1", connect=connect, election=AlwaysLeader(), clock=clock)
    daemon = Daemon(Agent(env, ConfigSource.fixed(Config())), clock, Notifier(lambda s: True),
                    sleep_slice=3600.0)
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        daemon.loop(5)
    assert len(calls) == 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "cycle failed: ZeroDivisionError: a bug of ours" in errors[0].getMessage()


def test_a_cycle_overrun_is_one_warning_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    lab = make_lab(BALANCED, Config(seed=1), faults=True)
    assert lab.faults is not None
    lab.run(10)
    slow = lab.faults.add(kind="latency", method="GET", path="/cluster/tasks", seconds=7.0,
                          count=6)
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        lab.run(20 * 5)
        # the episode ends after HEARTBEAT seconds without an overrun, so
        # that overruns which recur (a slow endpoint timing out once a
        # minute) stay one episode
        assert messages(caplog, "within the 5 s interval again") == []
        lab.run(HEARTBEAT + 10)
    assert slow.fired == 6 or lab.faults.faults == []
    overruns = problems(caplog, "longer than the 5 s interval")
    assert len(overruns) == 1 and lab.daemon.overruns == 6
    assert len(messages(caplog, "within the 5 s interval again")) == 1


# -- the cause, named --------------------------------------------------------


def agent_over_https(hs: HttpsSim, url: str | None = None) -> Agent:
    """The agent as `pve-balancer run` builds it: its client opened by the
    command line's own factory, on every cycle until it succeeds."""
    args = argparse.Namespace(api_url=url or hs.url)
    paths = PveRoot(hs.root)
    env = PveEnvironment(node="pve1", connect=lambda: cli.open_client(args, paths),
                         election=AlwaysLeader())
    return Agent(env, ConfigSource.fixed(Config(seed=1)))


FIRST = "leading as the only balancer (no election); "


def first_cycle(agent: Agent) -> CycleResult:
    """The first cycle's result that is not about facts still to be read
    (a term reads one slow fact per cycle), its sentence without the
    election's news."""
    opening = agent.run_cycle()
    assert opening.sentence.startswith(FIRST), opening.sentence
    result = first_decision(agent, pause=0) if READING in opening.sentence else opening
    assert result.level == logging.WARNING and result.error is None, result
    for raw in ("HTTPSConnectionPool", "Max retries", "urllib3", "object at 0x"):
        assert raw not in result.sentence, result.sentence
    return replace(result, sentence=result.sentence.removeprefix(FIRST))


def test_a_refused_token_names_the_token_file_and_setup(tmp_path: Path) -> None:
    secret = "00000000-0000-4000-8000-000000000000"
    with https_sim(tmp_path, BALANCED, token=f"{AGENT_TOKEN}={secret}") as hs:
        result = first_cycle(agent_over_https(hs))
    s = result.sentence
    assert s.startswith("the PVE API refused the token pve-balancer@pve!agent"), s
    assert "HTTP 401" in s and str(hs.root / "priv" / "pve-balancer.token") in s
    assert "pve-balancer setup" in s and secret not in s
    assert result.fields["problem"] == "token-refused"


def test_a_missing_privilege_names_the_token_and_setup(tmp_path: Path) -> None:
    scenario = {**memory_hot(), "tokens": [
        {"id": AGENT_TOKEN, "privileges": ["Sys.Audit", "VM.Audit"]}]}
    with https_sim(tmp_path, scenario) as hs:
        s = first_cycle(agent_over_https(hs)).sentence
    assert s.startswith("the PVE API refused the token pve-balancer@pve!agent"), s
    assert "HTTP 403 Permission check failed (/vms/" in s and "VM.Migrate)" in s
    assert "pve-balancer setup" in s


def test_a_wrong_ca_names_the_ca_file(tmp_path: Path) -> None:
    with https_sim(tmp_path, BALANCED) as hs:
        other = ensure_pki(tmp_path / "other-pki", ["pve1"])
        hs.ca.write_bytes(other.ca_cert_path.read_bytes())
        result = first_cycle(agent_over_https(hs))
    s = result.sentence
    assert s.startswith(f"cannot verify the PVE API at {hs.url}"), s
    assert f"against the CA in {hs.ca}" in s and "certificate verify failed" in s
    assert result.fields["problem"] == "tls"


def test_a_missing_ca_file_names_it(tmp_path: Path) -> None:
    with https_sim(tmp_path, BALANCED) as hs:
        hs.ca.unlink()
        s = first_cycle(agent_over_https(hs)).sentence
    assert s.startswith(f"cannot verify the PVE API at {hs.url}"), s
    assert f"CA file {hs.ca} does not exist" in s


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_names_the_url(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    with https_sim(tmp_path, BALANCED) as hs:
        result = first_cycle(agent_over_https(hs, url))
    s = result.sentence
    assert s.startswith(f"cannot reach the PVE API: connection to {url} refused "
                        "(GET /cluster/resources)"), s
    assert "pveproxy" in s and result.fields["problem"] == "unreachable"


def test_a_missing_token_file_says_so_and_names_setup(tmp_path: Path) -> None:
    with https_sim(tmp_path, BALANCED) as hs:
        token = hs.root / "priv" / "pve-balancer.token"
        token.unlink()
        agent = agent_over_https(hs)
        result = first_cycle(agent)
        assert result.sentence.startswith(f"no usable API token: cannot read API token file "
                                          f"{token}: No such file or directory"), result
        assert "pve-balancer setup" in result.sentence
        assert result.fields["problem"] == "token"
        token.write_text(f"{AGENT_TOKEN}={hs.sim.tokens[AGENT_TOKEN]}\n")
        token.chmod(0o600)
        assert agent.run_cycle().level == logging.INFO, "picked up at the next cycle"


# -- repeated warnings of the API parsers -------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_repeated_warning_is_let_through_once_per_window_with_a_count() -> None:
    now = [1000.0]
    logger = logging.getLogger("pve_balancer.pve")
    handler = ListHandler()
    handler.addFilter(journal.RepeatLimiter(window=600.0, clock=lambda: now[0]))
    top = logging.getLogger("pve_balancer")
    top.addHandler(handler)
    try:
        for i in range(114):
            logger.warning("/cluster/resources: node entry without a name skipped: %.120r",
                           {"i": i})
            logger.warning("/cluster/resources: node %s lacks maxcpu/maxmem; treated as "
                           "offline", f"pve{i}")
            now[0] += 0.1
        now[0] += 600
        logger.warning("/cluster/resources: node entry without a name skipped: %.120r", {})
        logging.getLogger("pve_balancer.other").warning("not limited %s", 1)
        logging.getLogger("pve_balancer.other").warning("not limited %s", 1)
    finally:
        top.removeHandler(handler)
    texts = [r.getMessage() for r in handler.records]
    assert texts == [
        "/cluster/resources: node entry without a name skipped: {'i': 0}",
        "/cluster/resources: node pve0 lacks maxcpu/maxmem; treated as offline",
        "/cluster/resources: node entry without a name skipped: {} "
        "(113 more like it in the last 10 min)",
        "not limited 1", "not limited 1"]


# -- text from the API, escaped --------------------------------------------------


def test_display_safe_escapes_controls_and_keeps_the_rest() -> None:
    assert display_safe(EVIL) == ("web\\nINFO migrated vm 999 (db) pve1 → pve2 in 1 s (OK)"
                                  "\\x1b]0;owned\\x07\\x1b[2J\\u202e")
    assert display_safe("Überweisung-01 ok") == "Überweisung-01 ok"
    assert display_safe(42) == "42"
    assert display_safe_block("Traceback:\n  \x1b[31mx\nValueError: a\nINFO forged\n") == (
        "Traceback:\n    \\x1b[31mx\n  ValueError: a\n  INFO forged")


@given(st.text())
def test_display_safe_never_lets_a_control_character_through(text: str) -> None:
    out = display_safe(text)
    assert "\n" not in out and not unsafe_chars(out)
    assert display_safe(out) == out or "\\" in out


def test_the_log_handler_escapes_every_record_and_field(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert journal.setup_logging(0, journal=False) == "stderr"
        log = logging.getLogger("pve_balancer.test")
        journal.log_sentence(log, f"dry run, not started: migrate vm 101 ({EVIL})",
                             {"source": "pve1\x1b[31m"}, logging.INFO)
        log.warning("/cluster/resources: node %s lacks maxcpu/maxmem", EVIL)
        try:
            raise ValueError(EVIL)
        except ValueError as exc:
            journal.log_sentence(log, "cycle failed", {}, logging.ERROR, error=exc)
        err = capsys.readouterr().err
        assert not unsafe_chars(err), repr(err)
        assert not any(line.startswith("INFO migrated") for line in err.splitlines())
        assert err.count("\\x1b]0;owned") == 3
        # the journald handler: the same filter, the fields too
        assert journal.setup_logging(0, journal=True) in ("journal", "stderr")
        handler = root.handlers[0]
        record = log.makeRecord(log.name, logging.INFO, __file__, 1, "vm 101 (%s)", (EVIL,),
                                None, extra=journal.fields(source=EVIL))
        assert handler.filter(record)
        text = handler.format(record)
        assert "\n" not in text and not unsafe_chars(text)
        assert not unsafe_chars(record.PVE_BALANCER_SOURCE)  # type: ignore[attr-defined]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_status_sent_to_systemd_is_one_safe_line() -> None:
    lab = make_lab(memory_hot(EVIL), Config(seed=1, dry_run=True))
    lab.run(30)
    assert any("dry run, not started" in s for _, s in lab.sentences)
    status = [n for n in lab.notifications if n.startswith("STATUS=")]
    assert status and all("\n" not in n and not unsafe_chars(n) for n in status), status


# -- real processes ------------------------------------------------------------


def agent_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")}


class Lines:
    """The lines a process writes to stderr, as they come."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{text!r} not in {self.lines}")
                self._cond.wait(left)

    def finish(self) -> list[str]:
        self._thread.join(timeout=30)
        return self.lines


def run_agent(hs: HttpsSim, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pve_balancer", *hs.cli_args("-v", "run", "--single", *extra)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=agent_env())


def test_process_a_missing_token_is_two_lines_however_long_it_lasts(tmp_path: Path) -> None:
    with https_sim(tmp_path, BALANCED, config="interval: 2\n") as hs:
        token = hs.root / "priv" / "pve-balancer.token"
        line = token.read_text()
        token.unlink()
        proc = run_agent(hs, "--cycles", "4")
        assert proc.stderr is not None
        out = Lines(proc.stderr)
        try:
            out.wait_for("(again: 2 cycles in")
            token.write_text(line)
            token.chmod(0o600)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = [x for x in out.finish() if not x.split(" ", 3)[2].startswith("DEBUG")]
    warnings = [x for x in lines if " WARNING " in x or " ERROR " in x]
    assert len(warnings) == 1, lines
    assert f"no usable API token: cannot read API token file {token}" in warnings[0]
    assert "pve-balancer setup" in warnings[0]
    ends = [x for x in lines if "PVE API reachable again after" in x]
    assert len(ends) == 1 and "cycles failed" in ends[0], lines


def test_process_broken_resource_entries_are_said_once(tmp_path: Path) -> None:
    with https_sim(tmp_path, BALANCED, config="interval: 2\n") as hs:
        hs.faults.add(kind="missing_fields", method="GET", path="/cluster/resources",
                      fields=("node",))
        proc = run_agent(hs, "--cycles", "3")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    skipped = [x for x in err.splitlines() if "skipped" in x and "DEBUG" not in x]
    assert len(skipped) == 2, skipped  # one node-entry line, one guest-entry line


def test_process_guest_names_reach_the_journal_escaped(tmp_path: Path) -> None:
    with https_sim(tmp_path, memory_hot(EVIL), config="interval: 2\ndry_run: true\n") as hs:
        proc = run_agent(hs, "--cycles", "5")  # the first four read the slow facts
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "dry run, not started" in err and "\\x1b]0;owned" in err
    assert not unsafe_chars(err), repr(err)
    assert not any(line.startswith("INFO migrated") for line in err.splitlines())


def test_one_off_problems_are_one_line_each_and_other_guests_are_news() -> None:
    journal_ = CycleJournal()
    fails = [journal_.lines(t, f"migration of vm {v} (vm{v}) pve1 → pve2 could not start: "
                            f"HTTP 500; vm {v} in cooldown for 900 s", logging.WARNING,
                            {"vmid": v})
             for t, v in ((0.0, 105), (5.0, 104))]
    after = journal_.lines(10.0, "no action: balanced", logging.INFO)
    assert [[(x.level, x.text[:19]) for x in lines] for lines in fails] == [
        [(logging.WARNING, "migration of vm 105")], [(logging.WARNING, "migration of vm 104")]]
    assert [x.text for x in after] == ["no action: balanced"], "no end line for one-off events"
    # a condition that lasts has an end
    for t in (15.0, 20.0, 25.0):
        journal_.lines(t, "passive: no valid configuration in /etc/pve/balancer.yaml",
                       logging.WARNING)
    end = journal_.lines(30.0, "no action: balanced", logging.INFO)
    assert [x.text for x in end] == [
        "resolved after 15 s (3 cycles): passive: no valid configuration in "
        "/etc/pve/balancer.yaml", "no action: balanced"]
