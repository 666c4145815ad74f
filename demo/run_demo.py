"""The pve-balancer demo (`dev/demo`): a simulated 3-node Proxmox VE cluster,
one real `pve-balancer run` agent per node, a CPU hotspot, a crash of the
leader and the failover - in about two minutes, without a Proxmox cluster.

What runs (all real processes, all on 127.0.0.1):
- `python -m pvesim serve --pmxcfs`: the simulated cluster. Each node has its
  own HTTPS API and its own `/etc/pve`, a FUSE mount of the pmxcfs emulator
  (one shared tree, the lock rules of pmxcfs). Its clock runs `--speed` times
  faster than real time.
- three agents, `pve-balancer --pve-root <node's mount> --node <node>
  --api-url <node's API> run`, exactly as on a node (plus lab-only election
  timing that matches the shortened lock lifetime).

The script prints what the agents say as it happens (role changes,
decisions, migrations), a cluster line now and then (published CPU with the
one-minute average the leader acts on, computed with the agent's own
smoothing, `pve_balancer.ema`), and its own commentary; while the hotspot
waits for that average to cross cpu_max it shows the average rising. Then a
summary, a PNG of the run (demo/picture.py: the demo's own observations
with the hotspot, each migration, the kill and the failover marked) and the
logs.
It exits 0 when a hotspot was relieved, a failover happened and the plot
was written; 1 if not, 2 without FUSE, 130 when interrupted.
Every process and mount it started is removed on exit, on Ctrl-C and on
SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
import yaml  # noqa: E402

from demo.picture import Move, Sample, Story, save, write_picture  # noqa: E402
from pve_balancer.ema import ema_alpha  # noqa: E402
from pvesim.control import ControlClient  # noqa: E402
from pvesim.pmxcfs import cleanup_mounts, fuse_available  # noqa: E402
from pvesim.pmxcfs.ctl import send as pmxcfs_send  # noqa: E402
from pvesim.pmxcfs.mounts import mounted_fuse_paths  # noqa: E402

SCENARIO = REPO / "demo" / "scenario.yaml"
LOCK_NAME = "pve-balancer"
HOTSPOT_NODE = "pve1"
AVERAGE_EVERY = 3.0
"""Seconds between the lines that show the one-minute average rising while
the hotspot waits for it to cross cpu_max."""


class DemoInterruptError(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: stop, clean up, exit."""


# ----------------------------------------------------------------- output

class Screen:
    """Time-stamped lines (seconds since the demo started), colour on a tty."""

    COLOURS: ClassVar[dict[str, str]] = {
        "pve1": "36", "pve2": "35", "pve3": "33", "demo": "1", "cluster": "32", "warn": "31"}

    def __init__(self, colour: bool) -> None:
        self.t0 = time.monotonic()
        self.colour = colour
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, who: str, text: str, style: str | None = None) -> None:
        label = f"{who:<7}"
        code = self.COLOURS.get(style or who)
        if self.colour and code:
            label = f"\033[{code}m{label}\033[0m"
            if who in ("demo", "warn"):
                text = f"\033[{code}m{text}\033[0m"
        with self.lock:
            print(f"[{self.elapsed():6.1f}s] {label} {text}", flush=True)

    def plain(self, text: str = "") -> None:
        with self.lock:
            print(text, flush=True)


# ------------------------------------------------------------- processes

def guarded(cmd: list[str]) -> list[str]:
    """`cmd` under `setpriv --pdeathsig TERM` (util-linux) when available, so
    a child gets SIGTERM even if the demo itself is killed outright. The
    children also run in their own session (`start_new_session`): Ctrl-C
    reaches only the demo, which then stops them in order."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    for key in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(key, None)
    return env


@dataclass
class AgentProc:
    node: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Event:
    wall: float
    node: str
    text: str


@dataclass
class Timeline:
    """What the demo saw, for the summary."""

    leaders: list[tuple[float, str, str]] = field(default_factory=list)  # (t, node, how)
    migrations_started: list[tuple[float, str, str]] = field(default_factory=list)
    migrations_done: list[tuple[float, str, str]] = field(default_factory=list)
    hotspot_at: float | None = None
    first_move_at: float | None = None
    hotspot_peak: float = 0.0
    relieved_at: float | None = None
    killed: tuple[float, str] | None = None
    last_renew_before_kill: float | None = None
    takeover: tuple[float, str] | None = None


# ------------------------------------------------------------------ demo

class Demo:
    def __init__(self, args: argparse.Namespace, out: Path, screen: Screen) -> None:
        self.args = args
        self.out = out
        self.screen = screen
        self.state = out / "state"
        self.serve: subprocess.Popen[bytes] | None = None
        self.conn: dict[str, Any] = {}
        self.agents: dict[str, AgentProc] = {}
        self.events: queue.Queue[Event] = queue.Queue()
        self.timeline = Timeline()
        self.leader: str | None = None
        self.cpu_max = 0.8
        self.memory_max = 0.8
        self.last_cluster_line = 0.0
        self.cluster: dict[str, dict[str, float]] = {}
        self.png = out / "run.png"
        self.metrics_path = out / "metrics.json"
        self.metrics: dict[str, Any] = {}
        self.agent_requests: dict[str, int] = {}
        self.migrate_posts: list[dict[str, Any]] = []
        # the agent's smoothing of each node's published CPU, in the agents'
        # (wall) time, and what the picture draws
        self.cpu_avg: dict[str, float] = {}
        self.avg_at = 0.0
        self.last_avg_line = 0.0
        self.samples: list[Sample] = []
        self.moves: list[Move] = []

    # -- timing of the election for the chosen lifetime
    def election_args(self) -> list[str]:
        lifetime = self.args.lifetime
        if lifetime >= 120:
            return []  # production timing
        safety = lifetime / 2
        renew = min(10.0, safety / 3)
        return ["--renew-interval", f"{renew:g}", "--safety-bound", f"{safety:g}",
                "--retry-interval", "2"]

    # -- start
    def start_cluster(self) -> None:
        doc = yaml.safe_load(SCENARIO.read_text(encoding="utf-8"))
        doc["start_time"] = int(time.time())
        self.cpu_max = float((doc.get("balancer_config") or {}).get("cpu_max", 0.8))
        self.memory_max = float((doc.get("balancer_config") or {}).get("memory_max", 0.8))
        scenario = self.out / "scenario.yaml"
        scenario.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        conn_path = self.out / "connection.json"
        cmd = [sys.executable, "-m", "pvesim", "serve", "--scenario", str(scenario),
               "--connection-file", str(conn_path), "--pmxcfs", "--isolated-api", "local",
               "--pmxcfs-lifetime", str(self.args.lifetime), "--speed", f"{self.args.speed:g}",
               "--state-dir", str(self.state), "--metrics-out", str(self.metrics_path)]
        with (self.out / "pvesim.log").open("wb") as log:
            self.serve = subprocess.Popen(guarded(cmd), cwd=REPO, env=child_env(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        deadline = time.monotonic() + 90
        while not conn_path.exists():
            if self.serve.poll() is not None:
                raise RuntimeError("the simulator exited; see "
                                   f"{self.out / 'pvesim.log'}:\n"
                                   f"{(self.out / 'pvesim.log').read_text()[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator did not come up within 90 s")
            time.sleep(0.05)
        self.conn = json.loads(conn_path.read_text())

    def start_agent(self, node: str) -> None:
        info = self.conn["nodes"][node]
        log_path = self.out / f"agent-{node}.log"
        cmd = [sys.executable, "-m", "pve_balancer", "--pve-root", info["pve_root"],
               "--node", node, "--api-url", info["api_url"], "run", *self.election_args()]
        proc = subprocess.Popen(guarded(cmd), cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        agent = AgentProc(node, proc, log_path)
        self.agents[node] = agent
        threading.Thread(target=self._read, args=(agent,), daemon=True).start()

    def _read(self, agent: AgentProc) -> None:
        assert agent.proc.stdout is not None
        with agent.log_path.open("a", encoding="utf-8") as log:
            for raw in agent.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                # "2026-11-25 16:00:00,123 INFO text" -> text
                parts = line.split(" ", 3)
                text = parts[3] if len(parts) == 4 and parts[2].isupper() else line
                self.events.put(Event(time.monotonic(), agent.node, text))

    # -- watching
    def api_nodes(self) -> dict[str, dict[str, float]]:
        """Published node CPU and memory, read with the admin token (the
        demo's own reads show up in the request log as root@pam!admin)."""
        token = f"root@pam!admin={self.conn['tokens']['root@pam!admin']}"
        url = self.conn["api_url"] + "/api2/json/cluster/resources?type=node"
        resp = requests.get(url, headers={"Authorization": f"PVEAPIToken={token}"},
                            verify=self.conn["ca_cert"], timeout=10)
        resp.raise_for_status()
        return {n["node"]: {"cpu": float(n.get("cpu") or 0.0),
                            "mem": float(n.get("mem") or 0) / float(n.get("maxmem") or 1)}
                for n in resp.json()["data"]}

    def handle(self, ev: Event) -> None:
        text = ev.text
        t = self.timeline
        if "became leader" in text:
            self.leader = ev.node
            how = text[text.find("became leader"):].split(";")[0]
            t.leaders.append((ev.wall, ev.node, how))
            if t.killed is not None and t.takeover is None and ev.node != t.killed[1]:
                t.takeover = (ev.wall, ev.node)
        if "stepped down" in text and self.leader == ev.node:
            self.leader = None
        if "started task" in text or "started HA migration" in text:
            t.migrations_started.append((ev.wall, ev.node, text))
            if t.first_move_at is None:
                t.first_move_at = ev.wall
            self.moves.append(Move(ev.wall - self.screen.t0, None, move_label(text)))
        if text.startswith("migrated vm") or "; migrated vm" in text:
            t.migrations_done.append((ev.wall, ev.node, text))
            open_moves = [m for m in self.moves if m.end is None]
            if open_moves:
                open_moves[0].end = ev.wall - self.screen.t0
        if text.startswith("standby (leader:") and "unknown" not in text:
            return  # the periodic standby line adds nothing once the leader is known
        self.screen.say(ev.node, text)

    def cluster_line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_cluster_line < self.args.status_every:
            return
        self.last_cluster_line = now
        parts = [f"{n} cpu {v['cpu'] * 100:3.0f}% (1-min {self.cpu_avg.get(n, 0.0) * 100:3.0f}%)"
                 f" mem {v['mem'] * 100:3.0f}%" for n, v in sorted(self.cluster.items())]
        self.screen.say("cluster", " | ".join(parts) + f" | leader: {self.leader or '-'}")

    def poll_cluster(self) -> None:
        try:
            self.cluster = self.api_nodes()
        except (requests.RequestException, ValueError, KeyError):
            return
        now = time.monotonic()
        weight = ema_alpha(now - self.avg_at) if self.avg_at else 1.0
        for node, v in self.cluster.items():
            before = self.cpu_avg.get(node)
            self.cpu_avg[node] = v["cpu"] if before is None else \
                before + weight * (v["cpu"] - before)
        self.avg_at = now
        self.samples.append(Sample(now - self.screen.t0,
                                   {n: v["cpu"] for n, v in self.cluster.items()},
                                   {n: v["mem"] for n, v in self.cluster.items()},
                                   dict(self.cpu_avg)))
        t = self.timeline
        cpu = self.cluster.get(HOTSPOT_NODE, {}).get("cpu", 0.0)
        if t.hotspot_at is None and cpu > self.cpu_max:
            t.hotspot_at = time.monotonic()
            self.cluster_line(force=True)
            self.screen.say("demo", f"HOTSPOT: {HOTSPOT_NODE} CPU {cpu * 100:.0f}% is above "
                            f"cpu_max {self.cpu_max * 100:.0f}% (a VM there got busy). The "
                            "leader acts once its 1-minute CPU average crosses the line.")
        if t.hotspot_at is not None:
            t.hotspot_peak = max(t.hotspot_peak, cpu)
            if t.first_move_at is None and now - self.last_avg_line >= AVERAGE_EVERY:
                self.last_avg_line = now
                self.last_cluster_line = now  # this line stands in for the cluster line
                avg = self.cpu_avg.get(HOTSPOT_NODE, 0.0)
                self.screen.say("cluster", f"{HOTSPOT_NODE} cpu {cpu * 100:3.0f}%, 1-min "
                                f"average {avg * 100:3.0f}% rising (the leader acts above "
                                f"{self.cpu_max * 100:.0f}%) | leader: {self.leader or '-'}")
        if (t.hotspot_at is not None and t.relieved_at is None and t.migrations_done
                and cpu <= self.cpu_max):
            t.relieved_at = time.monotonic()
            self.cluster_line(force=True)
            self.screen.say("demo", f"RELIEVED: {HOTSPOT_NODE} CPU back to {cpu * 100:.0f}% "
                            f"{t.relieved_at - t.hotspot_at:.0f} s after the hotspot appeared, "
                            f"with {len(t.migrations_done)} migration(s).")

    def pump(self, until: Callable[[], bool], limit: float, what: str) -> bool:
        """Show events and cluster state until `until()` or `limit` s
        (`what` names the wait in the give-up warning; empty: just watch)."""
        deadline = time.monotonic() + limit
        next_poll = 0.0
        while True:
            try:
                ev = self.events.get(timeout=0.2)
                self.handle(ev)
                continue
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + 1.0
                self.poll_cluster()
                self.cluster_line()
            if until():
                return True
            if now > deadline:
                if what:
                    self.screen.say("warn", f"gave up waiting {limit:.0f} s for {what}")
                return False
            if self.serve is not None and self.serve.poll() is not None:
                raise RuntimeError("the simulator exited unexpectedly")

    def lock_age(self) -> tuple[str, float] | None:
        answer = pmxcfs_send(str(self.conn["pmxcfs_control"]), {"op": "status"})
        lock = (answer.get("locks") or {}).get(LOCK_NAME)
        return (str(lock["writer"]), float(lock["age"])) if lock else None

    # -- the story
    def run(self) -> bool:
        s, a = self.screen, self.args
        s.say("demo", f"starting a simulated 3-node cluster (clock x{a.speed:g}, pmxcfs lock "
              f"lifetime {a.lifetime} s; a real pmxcfs uses 120 s)")
        self.start_cluster()
        s.say("demo", "cluster up: every node has its own HTTPS API and its own /etc/pve "
              "(pmxcfs emulator mount). Starting one agent per node; they race for the "
              "lock /etc/pve/priv/lock/pve-balancer.")
        for node in self.conn["nodes"]:
            self.start_agent(node)
        if not self.pump(lambda: self.leader is not None, 60, "a leader"):
            return False
        s.say("demo", f"{self.leader} leads; the other two stand by and make no API calls. "
              f"At t=120 s simulated (~{120 / a.speed:.0f} s from the start) a VM on "
              f"{HOTSPOT_NODE} gets busy.")
        t = self.timeline
        if not self.pump(lambda: t.hotspot_at is not None, 120 / a.speed + 90, "the hotspot"):
            return False
        if not self.pump(lambda: t.relieved_at is not None, 240, "the hotspot to be relieved"):
            return False
        self.pump(lambda: False, a.hold, "")
        victim = self.leader
        if victim is None:
            s.say("warn", "no leader to kill")
            return False
        agent = self.agents[victim]
        agent.proc.send_signal(signal.SIGKILL)
        agent.killed = True
        kill_wall = time.monotonic()
        t.killed = (kill_wall, victim)
        self.leader = None
        agent.proc.wait(timeout=10)
        time.sleep(0.2)
        lock = self.lock_age()
        if lock is not None and lock[0] == victim:
            t.last_renew_before_kill = time.monotonic() - lock[1]
        s.say("demo", f"killed the leader's agent on {victim} (SIGKILL, as in a crash or power "
              f"loss). It could not release the lock; a standby may take it only once pmxcfs "
              f"lets it expire ({a.lifetime} s after the last renew).")
        if not self.pump(lambda: t.takeover is not None, a.lifetime + 60, "a standby to lead"):
            return False
        assert t.takeover is not None
        s.say("demo", f"FAILOVER: {t.takeover[1]} leads {t.takeover[0] - kill_wall:.1f} s after "
              "the kill.")
        self.pump(lambda: False, a.hold, "")
        return True

    # -- end
    def stop(self) -> None:
        """Agents first (orderly: they release the lock), then the simulator,
        which writes the plot and metrics and unmounts /etc/pve."""
        for agent in self.agents.values():
            if agent.alive():
                agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            try:
                agent.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait(timeout=10)
        if self.serve is not None and self.serve.poll() is None:
            with contextlib.suppress(Exception):
                self.collect()
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait(timeout=10)
        cleanup_mounts(self.state)
        if self.state.exists() and not mounted_fuse_paths(self.state):
            shutil.rmtree(self.state, ignore_errors=True)

    def draw(self) -> None:
        """The PNG of what the demo saw (demo/picture.py)."""
        t, t0 = self.timeline, self.screen.t0

        def rel(x: float | None) -> float | None:
            return None if x is None else x - t0

        story = Story(hotspot_node=HOTSPOT_NODE, cpu_max=self.cpu_max,
                      memory_max=self.memory_max, speed=self.args.speed,
                      hotspot=rel(t.hotspot_at), relieved=rel(t.relieved_at), moves=self.moves,
                      killed=None if t.killed is None else (t.killed[0] - t0, t.killed[1]),
                      takeover=None if t.takeover is None else (t.takeover[0] - t0,
                                                                t.takeover[1]))
        try:
            save(self.out / "picture.json", self.samples, story)
            write_picture(self.png, self.samples, story)
        except (ImportError, OSError, ValueError) as exc:
            self.screen.say("warn", f"could not draw {self.png}: {exc}")

    def collect(self) -> None:
        """Request log and metrics while the simulator still runs."""
        ctl = ControlClient.from_connection(self.conn)
        entries = ctl.requests()["entries"]
        agent_token = self.conn["token_id"]
        counts: dict[str, int] = {}
        for e in entries:
            if e["token_id"] == agent_token:
                counts[e["served_by"]] = counts.get(e["served_by"], 0) + 1
        self.agent_requests = counts
        self.migrate_posts = [e for e in entries if e["method"] == "POST"
                              and e["path"].endswith("/migrate")
                              and e["token_id"] == agent_token]
        self.metrics = ctl.metrics()

    def summary(self, ok: bool) -> dict[str, Any]:
        t = self.timeline
        t0 = self.screen.t0

        def rel(x: float | None) -> float | None:
            return None if x is None else round(x - t0, 1)

        if self.metrics_path.exists():
            with contextlib.suppress(ValueError, OSError):
                self.metrics = json.loads(self.metrics_path.read_text())
        moves = (self.metrics.get("migrations") or {}).get("list") or []
        cpu_episodes = (self.metrics.get("threshold_episodes") or {}).get("cpu") or {}
        doc: dict[str, Any] = {
            "ok": ok,
            "speed": self.args.speed,
            "lock_lifetime": self.args.lifetime,
            "leaders": [{"at": rel(w), "node": n, "how": how} for w, n, how in t.leaders],
            "leader_changes": max(0, len(t.leaders) - 1),
            "migrations": [{"vmid": m["vmid"], "source": m["source"], "target": m["target"],
                            "ok": m["ok"], "user": m["user"]} for m in moves],
            "migrate_posts_by_node": sorted({p["served_by"] for p in self.migrate_posts}),
            "agent_api_requests_by_node": self.agent_requests,
            "hotspot_seen_at": rel(t.hotspot_at),
            "hotspot_peak_cpu": round(t.hotspot_peak, 3),
            "relieved_at": rel(t.relieved_at),
            "time_to_relieve": None if t.relieved_at is None or t.hotspot_at is None
            else round(t.relieved_at - t.hotspot_at, 1),
            "hotspot_simulated_seconds": cpu_episodes.get("max_seconds"),
            "hotspot_relieved": t.relieved_at is not None,
            "killed": None if t.killed is None else {"at": rel(t.killed[0]),
                                                     "node": t.killed[1]},
            "failover": None if t.takeover is None or t.killed is None else {
                "node": t.takeover[1],
                "after_kill": round(t.takeover[0] - t.killed[0], 1),
                "after_last_renew": None if t.last_renew_before_kill is None
                else round(t.takeover[0] - t.last_renew_before_kill, 1)},
            "plot": str(self.png) if self.png.exists() else None,
            "output": str(self.out),
        }
        (self.out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
        return doc


def move_label(text: str) -> str:
    """`vm 102 (app1) pve1 -> pve2` from the agent's sentence that started
    the migration (`... migrate vm 102 (app1) from pve1 to pve2: ...`)."""
    m = re.search(r"migrate (vm \d+(?: \([^)]*\))?) from (\S+) to ([^\s:;]+)", text)
    if m is None:
        return "a guest"
    return f"{m.group(1)} {m.group(2)} -> {m.group(3)}"


def print_summary(screen: Screen, doc: dict[str, Any]) -> None:
    p = screen.plain
    p()
    p("summary")
    p("-------")
    leaders = ", ".join(f"{x['node']} at {x['at']:.0f} s ({x['how']})" for x in doc["leaders"])
    p(f"leaders:          {leaders or 'none'}")
    p(f"leader changes:   {doc['leader_changes']}")
    moves = doc["migrations"]
    if moves:
        by = ", ".join(doc["migrate_posts_by_node"]) or "?"
        listed = "; ".join(f"vm {m['vmid']} {m['source']} -> {m['target']}"
                           f"{'' if m['ok'] else ' (failed)'}" for m in moves)
        p(f"migrations:       {len(moves)} ({listed}); POSTed by the agent on {by} only")
    else:
        p("migrations:       none")
    if doc["hotspot_relieved"]:
        sim = doc["hotspot_simulated_seconds"]
        sim_text = f", {sim:.0f} s simulated" if isinstance(sim, int | float) else ""
        p(f"hotspot:          relieved {doc['time_to_relieve']:.0f} s after it appeared "
          f"(peak {doc['hotspot_peak_cpu'] * 100:.0f}% CPU{sim_text})")
    else:
        p("hotspot:          NOT relieved")
    fo = doc["failover"]
    if fo:
        renew = (f", {fo['after_last_renew']:.1f} s after the last lock renew"
                 if fo["after_last_renew"] is not None else "")
        p(f"failover:         {doc['killed']['node']} killed; {fo['node']} led "
          f"{fo['after_kill']:.1f} s later{renew} (lock lifetime {doc['lock_lifetime']} s)")
    else:
        p("failover:         none observed")
    reqs = doc["agent_api_requests_by_node"]
    if reqs:
        p("agent API calls:  " + ", ".join(f"{n} {c}" for n, c in sorted(reqs.items()))
          + " (standbys make none)")
    p(f"plot:             {doc['plot'] or 'NOT written (see pvesim.log)'}")
    p(f"logs and metrics: {doc['output']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="dev/demo", description="A simulated 3-node PVE cluster with three pve-balancer "
        "agents: leader election, a CPU hotspot relieved, the leader killed and a standby "
        "taking over. Needs root and /dev/fuse (the pmxcfs emulator).")
    ap.add_argument("--speed", type=float, default=4.0,
                    help="simulated seconds per real second (default: %(default)g)")
    ap.add_argument("--lifetime", type=int, default=15,
                    help="pmxcfs lock lifetime in seconds (default: %(default)s; 120 is "
                    "the real one and uses the agent's production timing)")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory for the plot, metrics and logs (default: a new "
                    "/tmp/pve-balancer-demo-* directory)")
    ap.add_argument("--hold", type=float, default=8.0,
                    help="seconds to watch after the relief and after the failover")
    ap.add_argument("--status-every", type=float, default=10.0,
                    help="seconds between cluster lines (default: %(default)g)")
    ap.add_argument("--no-colour", action="store_true", help="plain output")
    args = ap.parse_args(argv)
    if args.speed <= 0 or args.lifetime < 4:
        ap.error("--speed must be > 0 and --lifetime at least 4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = fuse_available()
    if reason:
        print(f"dev/demo: the pmxcfs emulator needs FUSE as root: {reason}", file=sys.stderr)
        return 2
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="pve-balancer-demo-", dir="/tmp"))
    else:
        out = args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
    screen = Screen(colour=sys.stdout.isatty() and not args.no_colour
                    and os.environ.get("NO_COLOR") is None)

    def interrupt(signum: int, _frame: object) -> None:
        raise DemoInterruptError(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    demo = Demo(args, out, screen)
    ok = False
    interrupted: str | None = None
    try:
        ok = demo.run()
    except DemoInterruptError as exc:
        interrupted = str(exc)
    except (RuntimeError, OSError, requests.RequestException) as exc:
        screen.say("warn", f"demo failed: {exc}")
    finally:
        # Stopping must not itself be interrupted half-way.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        screen.say("demo", "stopping the agents (SIGTERM) and the simulator; drawing the plot")
        demo.stop()
        demo.draw()
    if interrupted:
        screen.say("demo", f"interrupted ({interrupted}); all processes and mounts removed. "
                   f"Logs: {out}")
        return 130
    doc = demo.summary(ok)
    print_summary(screen, doc)
    success = bool(doc["hotspot_relieved"] and doc["failover"] and doc["plot"])
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
