"""The daemon loop: fixed rate, overrun warning, signal flags, sd_notify."""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import pytest

from pve_balancer import journal
from pve_balancer.agent import Agent, CycleResult
from pve_balancer.config import Config, ConfigSource
from pve_balancer.daemon import Daemon, sentence_kind
from pve_balancer.env import PveEnvironment
from pve_balancer.leadership import AlwaysLeader
from pve_balancer.notify import Notifier, socket_notify
from pve_balancer.pve import PveClient


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class ScriptedAgent:
    """Stands in for Agent: each cycle takes `durations[i]` seconds."""

    def __init__(self, clock: Clock, durations: list[float], interval: float = 5.0) -> None:
        self.clock = clock
        self.durations = durations
        self.starts: list[float] = []
        self.config_source = ConfigSource.fixed(Config(interval=interval))
        self.election = AlwaysLeader()
        self.last_fields: dict[str, object] = {"role": "leader"}
        self.last_level = logging.INFO
        self.reloads = 0
        self.on_cycle: Any = None

    def run_cycle(self) -> CycleResult:
        self.starts.append(self.clock.t)
        i = len(self.starts) - 1
        self.clock.t += self.durations[i] if i < len(self.durations) else 0.1
        if self.on_cycle:
            self.on_cycle(i)
        return CycleResult(f"no action: cycle {i}", self.last_level, dict(self.last_fields))

    def release(self) -> None:
        self.election.release()

    def reload(self) -> bool:
        self.reloads += 1
        return True

    def role(self) -> str:
        return self.election.describe()


def make(durations: list[float]) -> tuple[Daemon, ScriptedAgent, list[str]]:
    clock = Clock()
    agent = ScriptedAgent(clock, durations)
    sent: list[str] = []
    daemon = Daemon(agent, clock, Notifier(lambda s: sent.append(s) or True))  # type: ignore[arg-type]
    return daemon, agent, sent


def test_fixed_rate_and_overrun_warning(caplog: pytest.LogCaptureFixture) -> None:
    daemon, agent, _ = make([0.5, 7.0, 0.5, 0.5])
    with caplog.at_level(logging.WARNING, logger="pve_balancer"):
        daemon.run(max_cycles=4)
    # cycle starts stay on the 5 s grid until the overrun, then restart from it
    assert agent.starts == [0.0, 5.0, 12.0, 17.0]
    assert daemon.overruns == 1
    assert "cycle took 7.0 s, longer than the 5 s interval" in caplog.text


def test_sigterm_flag_finishes_the_cycle_releases_and_stops() -> None:
    daemon, agent, sent = make([0.1] * 10)
    agent.on_cycle = lambda i: daemon.request_stop() if i == 2 else None
    assert daemon.run() == 0
    assert len(agent.starts) == 3
    assert not agent.election.is_leader, "leadership released on stop"
    assert sent[0].startswith("STATUS=") and "READY=1" in sent
    assert sent.count("WATCHDOG=1") == 3
    assert sent[-1] == "STOPPING=1"


def test_sighup_sets_a_flag_and_reload_happens_between_cycles() -> None:
    daemon, agent, _ = make([0.1] * 3)
    daemon.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert daemon.reload_requested.is_set() and agent.reloads == 0
        daemon.run(max_cycles=1)
        assert agent.reloads == 1 and not daemon.reload_requested.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert daemon.stop_requested.is_set()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)


def test_repeated_sentences_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    daemon, _agent, _ = make([0.1] * 5)
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        daemon.run(max_cycles=5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no action")]
    assert lines == ["no action: cycle 0"], "same wording, only numbers differ"
    assert sentence_kind("no action: cpu 0.53 on pve1") == sentence_kind(
        "no action: cpu 0.61 on pve1")


def test_status_is_sent_only_when_it_changes() -> None:
    sent: list[str] = []
    n = Notifier(lambda s: sent.append(s) or True)
    n.status("leader: no action")
    n.status("leader:  no action")
    n.status("standby")
    assert sent == ["STATUS=leader: no action", "STATUS=standby"]


def test_socket_notify_reaches_an_abstract_socket() -> None:
    name = f"pve-balancer-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        assert socket_notify("READY=1", "@" + name)
        assert server.recv(100) == b"READY=1"


def test_socket_notify_reaches_a_path_socket(tmp_path: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert socket_notify("WATCHDOG=1")
        assert server.recv(100) == b"WATCHDOG=1"


def test_socket_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not socket_notify("READY=1")


def test_journal_fields_and_logging_target(monkeypatch: pytest.MonkeyPatch) -> None:
    assert journal.fields(mode="cpu", vmid=101, source="pve1", target=None) == {
        "PVE_BALANCER_MODE": "cpu", "PVE_BALANCER_VMID": "101", "PVE_BALANCER_SOURCE": "pve1"}
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert journal.setup_logging(0) == "stderr"
        monkeypatch.setenv("INVOCATION_ID", "abc")
        assert journal.setup_logging(0) == "journal"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_structured_fields_reach_the_log_record(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    agent = ScriptedAgent(clock, [0.1])
    agent.last_fields = {"role": "leader", "mode": "memory", "vmid": 105}
    daemon = Daemon(agent, clock, Notifier(lambda s: True))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        daemon.run_once()
    record = next(r for r in caplog.records if r.getMessage().startswith("no action"))
    assert record.PVE_BALANCER_MODE == "memory"  # type: ignore[attr-defined]
    assert record.PVE_BALANCER_VMID == "105"  # type: ignore[attr-defined]


def test_real_agent_in_the_loop_reports_its_role(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    def connect() -> PveClient:
        raise OSError("connection refused")

    env = PveEnvironment(node="pve1", connect=connect, election=AlwaysLeader(), clock=clock)
    agent = Agent(env, ConfigSource.fixed(Config()))
    sent: list[str] = []
    daemon = Daemon(agent, clock, Notifier(lambda s: sent.append(s) or True))
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        result = daemon.run_once()
    assert result.sentence.startswith(
        "leading as the only balancer (no election); cycle failed: OSError")
    assert sent[0].startswith("STATUS=leader: ")
    # an unexpected exception: one ERROR entry, the sentence with its traceback
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].getMessage() == result.sentence


def test_sighup_reload_is_framed_by_reloading_and_ready() -> None:
    daemon, agent, sent = make([0.1] * 3)
    daemon.run(max_cycles=1)
    sent.clear()
    daemon.request_reload()
    daemon.run_once()
    assert agent.reloads == 1
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert sent[1] == "READY=1", "systemctl reload returns once the reload is done"


def test_sighup_on_a_file_that_once_crashed_the_parser_keeps_the_daemon(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    def connect() -> PveClient:
        raise OSError("connection refused")

    path = tmp_path / "balancer.yaml"
    path.write_text("interval: 2\ndry_run: true\n")
    source = ConfigSource(path)
    env = PveEnvironment(node="pve1", connect=connect, election=AlwaysLeader(), clock=clock)
    sent: list[str] = []
    daemon = Daemon(Agent(env, source), clock, Notifier(lambda s: sent.append(s) or True))
    daemon.run_once()
    assert source.config == Config(interval=2.0, dry_run=True)
    path.write_text("interval: 2\nexclude_nodes: " + "[" * 1000 + "\n")
    daemon.request_reload()
    sent.clear()
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        daemon.run_once()
        daemon.run_once()
    assert daemon.cycles == 3
    assert source.config == Config(interval=2.0, dry_run=True), "last good kept"
    assert "rejected; keeping the previous configuration" in caplog.text
    assert sent[0].startswith("RELOADING=1") and sent[1] == "READY=1"


class FailingReload(ScriptedAgent):
    def reload(self) -> bool:
        self.reloads += 1
        raise RuntimeError("reload blew up")


def test_an_exception_from_reload_is_logged_once_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    agent = FailingReload(clock, [0.1] * 3)
    sent: list[str] = []
    daemon = Daemon(agent, clock, Notifier(lambda s: sent.append(s) or True))  # type: ignore[arg-type]
    daemon.request_reload()
    with caplog.at_level(logging.INFO, logger="pve_balancer"):
        assert daemon.run(max_cycles=3) == 0
    assert agent.reloads == 1 and len(agent.starts) == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].getMessage() == (
        "re-reading the configuration failed (RuntimeError: reload blew up); the "
        "configuration in force is kept")
    assert sent[:2] == [sent[0], "READY=1"] and sent[0].startswith("RELOADING=1"), \
        "systemctl reload still returns"
