"""A simulated cluster with real agents: `python -m pvesim serve` plus one
`pve-balancer run` process per node, and what the tests (and the demo) need
to watch them.

Everything is a real process: the simulator serves each node's API over
HTTPS; each node's `/etc/pve` is one of two file systems (`fs`):
- "emulator": a FUSE mount of the pmxcfs emulator (`serve --pmxcfs`);
- "real": Proxmox's pmxcfs on a real 3-node corosync cluster in namespaces
  (`tests/real_pmxcfs`). The agent runs in its node's mount and UTS
  namespaces, so it sees that node's pmxcfs at the production path
  /etc/pve and has the node's hostname, but stays in this network
  namespace, where the simulator's APIs listen on 127.0.0.1 (a PVE agent
  talks to its node's localhost API too). The simulator's own per-node
  roots then only hand over the CA, the token and balancer.yaml, which are
  written once into the real /etc/pve.
Every agent talks to its own node's API with its own node's /etc/pve, so its
`mkdir`/`utime`/`rmdir` calls are real syscalls on that node's mount.

Who did what is read from three independent sources:
- the agents' own output (each line time-stamped by the agent: role
  changes "became leader ..." / "stepped down: ...", migrations);
- the simulator's request log (`served_by` is the node whose API got the
  request, and each agent only talks to its own node's API);
- the file system: with the emulator its status (which node last wrote
  the lock, and how long ago), through the control socket named in the
  connection file; with the real pmxcfs the lock's mtime (the renewing
  agent's whole second, rounded down), which is all pmxcfs shows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pvesim.control import ControlClient
from pvesim.pmxcfs import cleanup_mounts, fuse_available
from pvesim.pmxcfs.ctl import send as pmxcfs_send
from pvesim.pmxcfs.mounts import mounted_fuse_paths
from tests.scenarios import scenario_path

REPO = Path(__file__).resolve().parents[2]
LAB_SCENARIO = scenario_path("lab-three-agents")
LOCK_NAME = "pve-balancer"

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Lock lifetime (pmxcfs emulator) and the agents' election timing.

    The agent ticks its election once per cycle (`interval` from
    balancer.yaml), so renews and standby attempts happen at most once per
    cycle: the effective retry is max(retry, interval)."""

    lifetime: int
    renew: float
    safety: float
    retry: float

    def agent_args(self) -> list[str]:
        return ["--renew-interval", f"{self.renew:g}", "--safety-bound", f"{self.safety:g}",
                "--retry-interval", f"{self.retry:g}"]


# Scaled like production (renew 1/12, safety 1/2 of the lifetime) but with a
# renew every cycle so a 2 s cycle keeps a 10 s lock fresh.
FAST = Timing(lifetime=10, renew=2.0, safety=5.0, retry=2.0)
# pmxcfs's real lifetime and the agent's production defaults.
REAL = Timing(lifetime=120, renew=10.0, safety=60.0, retry=5.0)


def require_fuse() -> None:
    """These tests need FUSE as root; without it they fail (never skip)."""
    import pytest

    reason = fuse_available()
    if reason:
        pytest.fail(f"needs FUSE as root: {reason}", pytrace=False)


def wait_for(what: str, probe: Callable[[], T], limit: float, step: float = 0.1) -> T:
    """Poll until `probe` returns something truthy; AssertionError after
    `limit` seconds (a bound on a wait, not a speed measurement)."""
    deadline = time.monotonic() + limit
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit:g} s waiting for {what}")
        time.sleep(step)


def write_scenario(directory: Path, source: Path = LAB_SCENARIO,
                   balancer_config: dict[str, Any] | None = None) -> Path:
    """A copy of `source` starting at the current wall time (the agents'
    clock), with `balancer_config` keys overridden."""
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    doc["start_time"] = int(time.time())
    if balancer_config:
        doc["balancer_config"] = {**(doc.get("balancer_config") or {}), **balancer_config}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / source.name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------- the agents

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) (.*)$")


@dataclass(frozen=True)
class Line:
    t: float  # the agent's own timestamp (unix seconds)
    level: str
    text: str


def _parse(raw: str, arrived: float) -> Line:
    m = _STAMP.match(raw)
    if not m:
        return Line(arrived, "", raw)
    stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return Line(stamp, m.group(2), m.group(3))


@dataclass(frozen=True)
class RoleEvent:
    t: float
    leader: bool
    text: str


def role_events(lines: Iterable[Line]) -> list[RoleEvent]:
    """Role changes in the agent's journal lines. A line may carry both
    ("stepped down: ...; became leader ..."), in that order."""
    events: list[RoleEvent] = []
    for line in lines:
        down = line.text.find("stepped down")
        up = line.text.find("became leader")
        found = sorted((pos, leader) for pos, leader in ((down, False), (up, True)) if pos >= 0)
        events.extend(RoleEvent(line.t, leader, line.text) for _, leader in found)
    return events


@dataclass
class Agent:
    """One `pve-balancer run` process for one node."""

    node: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float
    lines: list[Line] = field(default_factory=list)
    signalled: tuple[float, int] | None = None  # (wall time, signal)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in self.proc.stdout:
                text = raw.decode("utf-8", "replace").rstrip("\n")
                line = _parse(text, time.time())
                log.write(text + "\n")
                log.flush()
                with self._lock:
                    self.lines.append(line)

    def snapshot(self) -> list[Line]:
        with self._lock:
            return list(self.lines)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def events(self) -> list[RoleEvent]:
        return role_events(self.snapshot())

    def leading(self) -> bool:
        """Says it leads (last role change) and has not been stopped."""
        evs = self.events()
        return bool(evs) and evs[-1].leader and self.alive and self.signalled is None

    def became_leader_after(self, t: float) -> RoleEvent | None:
        return next((e for e in self.events() if e.leader and e.t >= t), None)

    def text(self) -> str:
        return "\n".join(f"{x.t:.3f} {x.level} {x.text}" for x in self.snapshot())

    def signal(self, sig: int) -> float:
        t = time.time()
        self.signalled = (t, sig)
        self.proc.send_signal(sig)
        return t

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def guarded(cmd: list[str]) -> list[str]:
    """`cmd` under `setpriv --pdeathsig TERM` (util-linux) when available:
    if the test process dies outright, its labs and agents stop too."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def agent_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    # Plain time-stamped stderr lines, not the journal, even when this
    # process itself runs under systemd.
    env.pop("INVOCATION_ID", None)
    env.pop("JOURNAL_STREAM", None)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    return env


# --------------------------------------------------------------- the cluster

FILE_SYSTEMS = ("emulator", "real")
# Files `pvesim serve` lays out per node that the agent reads from /etc/pve.
HANDED_OVER = ("pve-root-ca.pem", "priv/pve-balancer.token", "balancer.yaml")


@dataclass
class ProcessLab:
    """A running `pvesim serve`, the file system under /etc/pve (the pmxcfs
    emulator or the real pmxcfs), and the agents, each a real process (the
    in-process counterpart is `simlab.inprocess.InProcessLab`)."""

    proc: subprocess.Popen[bytes]
    conn: dict[str, Any]
    workdir: Path
    timing: Timing
    start_time: float
    agents: dict[str, list[Agent]] = field(default_factory=dict)
    fs: str = "emulator"
    cluster: Any = None  # tests.real_pmxcfs.cluster.RealCluster when fs == "real"

    @classmethod
    def start(cls, workdir: Path, scenario: Path, timing: Timing, speed: float = 1.0,
              extra: Iterable[str] = (), wait: float = 90.0, fs: str = "emulator") -> ProcessLab:
        if fs not in FILE_SYSTEMS:
            raise ValueError(f"fs must be one of {FILE_SYSTEMS}, not {fs!r}")
        require_fuse()
        workdir.mkdir(parents=True, exist_ok=True)
        cluster = None
        if fs == "real":
            from tests.real_pmxcfs.cluster import RealCluster

            if timing.lifetime != 120:
                raise ValueError("the real pmxcfs has a fixed 120 s lock lifetime")
            cluster = RealCluster(workdir / "cluster").start()
        try:
            lab = cls._serve(workdir, scenario, timing, speed, extra, wait, fs)
        except BaseException:
            if cluster is not None:
                cluster.stop()
            raise
        lab.cluster = cluster
        if cluster is not None:
            try:
                lab._hand_over()
            except BaseException:
                lab.stop()
                raise
        return lab

    @classmethod
    def _serve(cls, workdir: Path, scenario: Path, timing: Timing, speed: float,
               extra: Iterable[str], wait: float, fs: str) -> ProcessLab:
        # A short state dir: the emulator's control socket lives next to it.
        state = Path(tempfile.mkdtemp(prefix="lab-", dir="/tmp"))
        conn_path = workdir / "connection.json"
        conn_path.unlink(missing_ok=True)  # never read a previous run's file
        log_path = workdir / "serve.log"
        start_time = float(yaml.safe_load(scenario.read_text())["start_time"])
        pmxcfs = ["--pmxcfs", "--pmxcfs-lifetime", str(timing.lifetime)] \
            if fs == "emulator" else []
        cmd = [sys.executable, "-m", "pvesim", "serve", "--scenario", str(scenario),
               "--connection-file", str(conn_path), *pmxcfs, "--isolated-api", "local",
               "--speed", f"{speed:g}", "--state-dir", str(state), *extra]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(guarded(cmd), cwd=REPO, env=agent_env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        deadline = time.monotonic() + wait
        while not conn_path.exists():
            if proc.poll() is not None:
                raise AssertionError(f"pvesim serve exited {proc.returncode}:\n"
                                     f"{log_path.read_text()}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                cleanup_mounts(state)
                raise AssertionError(f"no connection file after {wait} s:\n"
                                     f"{log_path.read_text()}")
            time.sleep(0.05)
        conn = json.loads(conn_path.read_text())
        return cls(proc=proc, conn=conn, workdir=workdir, timing=timing, start_time=start_time,
                   fs=fs)

    def _hand_over(self) -> None:
        """The simulator's CA, agent token and balancer.yaml into the real
        /etc/pve (one tree: written once, on the first node)."""
        first = self.nodes[0]
        source = Path(self.conn["nodes"][first]["pve_root"])
        target = self.cluster.pve_root(first)
        for rel in HANDED_OVER:
            if (source / rel).exists():
                # in place: pmxcfs fixes the modes itself and refuses chmod
                (target / rel).write_bytes((source / rel).read_bytes())

    # -- controls and views
    @property
    def ctl(self) -> ControlClient:
        return ControlClient.from_connection(self.conn)

    @property
    def nodes(self) -> list[str]:
        return list(self.conn["nodes"])

    def pve_root(self, node: str) -> Path:
        """`node`'s /etc/pve as seen from this process."""
        if self.cluster is not None:
            return Path(self.cluster.pve_root(node))
        return Path(self.conn["nodes"][node]["pve_root"])

    def sim_now(self) -> float:
        return float(self.ctl.state()["now"])

    def lock_status(self) -> dict[str, Any] | None:
        """The emulator's view of the balancer lock: writer node, age in
        seconds since its create/last renew, expired; None when absent."""
        if self.cluster is not None:
            raise AssertionError("the real pmxcfs does not tell a lock's writer or age")
        answer = pmxcfs_send(str(self.conn["pmxcfs_control"]), {"op": "status"})
        if not answer.get("ok"):
            raise AssertionError(f"pmxcfs status failed: {answer}")
        lock = answer.get("locks", {}).get(LOCK_NAME)
        return dict(lock) if lock else None

    def lock_mtime(self, view: str) -> float | None:
        """The lock's mtime as `view`'s /etc/pve shows it (None: absent).
        On the real pmxcfs it is what the last take or renew wrote: the
        agent's clock in whole seconds, rounded down."""
        try:
            return os.stat(self.pve_root(view) / "priv" / "lock" / LOCK_NAME).st_mtime
        except FileNotFoundError:
            return None

    def last_renew(self, node: str) -> float:
        """Wall time of the lock's last create/renew, once `node`'s writes
        have stopped (killed or cut off). Emulator: from its status (the
        writer must be `node`). Real pmxcfs: the lock's mtime seen from
        another, quorate node, so up to 1 s before the real renew."""
        time.sleep(0.3)  # a syscall in flight at the kill is done by now
        if self.cluster is None:
            before = time.time()
            lock = self.lock_status()
            after = time.time()
            assert lock is not None, "the lock is gone"
            assert lock["writer"] == node, lock
            return (before + after) / 2 - float(lock["age"])
        time.sleep(1.1)  # past pmxcfs's 1 s attribute cache
        view = next(n for n in self.nodes if n != node and self.cluster.quorate(n))
        mtime = self.lock_mtime(view)
        assert mtime is not None, "the lock is gone"
        return mtime

    # -- the file system's controls
    def cut(self, node: str) -> None:
        """`node` loses the cluster network: in the simulator (its API keeps
        answering its own agent, `--isolated-api local`) and in the file
        system (emulator: quorum through the simulator; real: its corosync
        links)."""
        if self.cluster is not None:
            self.cluster.cut(node)
        self.ctl.network(node, up=False)

    def heal(self, node: str) -> None:
        if self.cluster is not None:
            self.cluster.heal(node)
        self.ctl.network(node, up=True)

    def stop_pmxcfs(self, node: str) -> None:
        """`node`'s pmxcfs stops (its /etc/pve is unmounted)."""
        if self.cluster is not None:
            self.cluster.stop_pmxcfs(node)
        else:
            pmxcfs_send(str(self.conn["pmxcfs_control"]), {"op": "unmount_node", "node": node})

    def start_pmxcfs(self, node: str) -> None:
        if self.cluster is not None:
            self.cluster.start_pmxcfs(node)
        else:
            answer = pmxcfs_send(str(self.conn["pmxcfs_control"]),
                                 {"op": "mount_node", "node": node})
            assert answer.get("ok"), answer

    def requests(self) -> list[dict[str, Any]]:
        return list(self.ctl.requests()["entries"])

    def migrate_posts(self) -> list[dict[str, Any]]:
        return [e for e in self.requests()
                if e["method"] == "POST" and e["path"].endswith("/migrate")]

    def migrations(self) -> list[dict[str, Any]]:
        return list(self.ctl.metrics()["migrations"]["list"])

    def node_memory(self) -> dict[str, float]:
        """Memory fraction per node as the API publishes it (root token)."""
        import requests

        token = f"root@pam!admin={self.conn['tokens']['root@pam!admin']}"
        url = self.conn["api_url"] + "/api2/json/cluster/resources?type=node"
        resp = requests.get(url, headers={"Authorization": f"PVEAPIToken={token}"},
                            verify=self.conn["ca_cert"], timeout=10)
        resp.raise_for_status()
        return {n["node"]: n["mem"] / n["maxmem"] for n in resp.json()["data"]
                if n.get("maxmem")}

    # -- agents
    def start_agent(self, node: str, timing: Timing | None = None,
                    extra: Iterable[str] = ()) -> Agent:
        timing = timing or self.timing
        info = self.conn["nodes"][node]
        n = len(self.agents.get(node, []))
        log_path = self.workdir / f"agent-{node}-{n}.log"
        root = "/etc/pve" if self.cluster is not None else info["pve_root"]
        cmd = [sys.executable, "-m", "pve_balancer", "--pve-root", root,
               "--node", node, "--api-url", info["api_url"], "run", *timing.agent_args(),
               *extra]
        if self.cluster is not None:  # on the node: its mount and UTS namespaces
            cmd = self.cluster.command(node, cmd, cwd=REPO)
        proc = subprocess.Popen(guarded(cmd), cwd=REPO, env=agent_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        agent = Agent(node=node, proc=proc, log_path=log_path, started=time.time())
        agent._reader = threading.Thread(target=agent._read, name=f"agent-{node}", daemon=True)
        agent._reader.start()
        self.agents.setdefault(node, []).append(agent)
        return agent

    def all_agents(self) -> list[Agent]:
        return [a for runs in self.agents.values() for a in runs]

    def leaders(self) -> list[Agent]:
        return [a for a in self.all_agents() if a.leading()]

    def wait_leader(self, limit: float = 30.0, among: Iterable[Agent] | None = None) -> Agent:
        pool = list(among) if among is not None else None

        def probe() -> Agent | None:
            current = [a for a in (pool or self.all_agents()) if a.leading()]
            return current[0] if len(current) == 1 else None

        return wait_for("exactly one agent to lead", probe, limit)

    def overlaps(self) -> list[str]:
        """Pairs of leadership terms of different agents that overlap in
        time (by the agents' own timestamps). A term ends at the agent's
        step-down line, its SIGKILL, or its last line after SIGTERM."""
        terms: list[tuple[float, float, str]] = []
        for agent in self.all_agents():
            lines = agent.snapshot()
            end_of_life = float("inf")
            if agent.signalled is not None:
                t_sig, sig = agent.signalled
                end_of_life = t_sig if sig == signal.SIGKILL else max(
                    [t_sig, *(x.t for x in lines)])
            start: float | None = None
            for ev in role_events(lines):
                if ev.leader and start is None:
                    start = ev.t
                elif not ev.leader and start is not None:
                    terms.append((start, ev.t, f"{agent.node}#{agent.proc.pid}"))
                    start = None
            if start is not None:
                terms.append((start, end_of_life, f"{agent.node}#{agent.proc.pid}"))
        found = []
        terms.sort()
        for i, (a0, a1, who_a) in enumerate(terms):
            for b0, b1, who_b in terms[i + 1:]:
                if who_a != who_b and b0 < a1 and a0 < b1:
                    found.append(f"{who_a} [{a0:.3f}, {a1:.3f}] overlaps {who_b} "
                                 f"[{b0:.3f}, {b1:.3f}]")
        return found

    def report(self) -> str:
        """Everything a failing assertion should show."""
        parts = []
        for agent in self.all_agents():
            parts.append(f"--- agent {agent.node} pid {agent.proc.pid} "
                         f"(rc {agent.proc.poll()}):\n{agent.text()[-4000:]}")
        with contextlib.suppress(OSError):
            parts.append("--- serve:\n" + (self.workdir / "serve.log").read_text()[-2000:])
        return "\n".join(parts)

    def stop(self) -> int | None:
        for agent in self.all_agents():
            agent.stop()
        rc: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(timeout=10)
        else:
            rc = self.proc.returncode
        state = Path(self.conn["state_dir"])
        cleanup_mounts(state)
        if not mounted_fuse_paths(state):
            shutil.rmtree(state, ignore_errors=True)
        if self.cluster is not None:
            self.cluster.stop()
        return rc
