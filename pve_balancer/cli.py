"""`pve-balancer`: the command line (the daemon, a dry plan, status, config
check and first-time setup).

Every path the agent uses derives from one root, `--pve-root` (default
`/etc/pve`), so the same binary runs against a simulated cluster's emulated
`/etc/pve`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

from . import __version__, provision
from .agent import Agent, Plan
from .bounded import BoundedCalls
from .config import Config, ConfigSource, load_config
from .display import display_safe
from .election import PmxcfsElection
from .env import PveEnvironment, SystemClock
from .episodes import duration
from .journal import setup_logging
from .leadership import AlwaysLeader, Election
from .model import Snapshot
from .paths import DEFAULT_ROOT, PveRoot
from .pve import PveClient, PveError, TokenError, connect, open_token
from .status import StatusWriter, leader_state, read_status

log = logging.getLogger("pve_balancer")

DEFAULT_API_URL = "https://localhost:8006"

# `status` exit codes, as Nagios-style checks read them. The leader's state
# decides; the live sample only when the leader is fine.
STATUS_OK = 0
"""OK: a leader published its status within the staleness bound."""
STATUS_STALE = 1
"""WARNING: the leader stopped refreshing its status (it may be gone, or a
standby is about to take over after the lock's lifetime)."""
STATUS_NO_LEADER = 2
"""CRITICAL: no leader: no status at all, or the last leader stopped
cleanly and nobody took over (no agent running anywhere)."""
STATUS_API_UNREACHABLE = 3
"""UNKNOWN: the leader is fine by its status, but this node's API could not
be asked for the live sample, so what `status` shows is not confirmed."""

PLAN_SEED = 0
"""The seed `plan` uses when the configuration leaves `seed` null."""

BROKEN_PIPE = 141
"""Exit status when the reader of our output went away (`plan | head`):
128 + SIGPIPE, what a shell reports for a command that pipe killed."""


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


# ------------------------------------------------------------------ parser

DESCRIPTION = """\
Keeps CPU and memory available on a Proxmox VE cluster with the fewest live
migrations. One agent runs on every node; the one holding the pmxcfs lock
PVE_ROOT/priv/lock/pve-balancer (PVE_ROOT: --pve-root, default
/etc/pve) leads, the others stand by.

Files (derived from --pve-root):
  PVE_ROOT/balancer.yaml              cluster-wide configuration
  PVE_ROOT/priv/pve-balancer.token    API token USER@REALM!TOKENID=SECRET (0600)
  PVE_ROOT/pve-root-ca.pem            CA that signs the local API's certificate
  PVE_ROOT/pve-balancer/status.json   leader, node view and last decisions
"""

EPILOG = """\
examples:
  pve-balancer check-config                 validate /etc/pve/balancer.yaml
  pve-balancer plan                         what would the leader do now, and why
  pve-balancer status                       who leads, node table, last decisions
  journalctl -u pve-balancer -f             follow the agent
  journalctl -u pve-balancer PVE_BALANCER_VMID=101
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pve-balancer", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--pve-root", metavar="DIR", type=Path, default=DEFAULT_ROOT,
                        help="cluster file system root (default: %(default)s)")
    parser.add_argument("--node", metavar="NAME", default=None,
                        help="this node's name (default: short hostname)")
    parser.add_argument("--api-url", metavar="URL", default=DEFAULT_API_URL,
                        help="local PVE API (default: %(default)s)")
    parser.add_argument("--config", metavar="FILE", type=Path, default=None,
                        help="configuration file (default: PVE_ROOT/balancer.yaml)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail (-v: every cycle, -vv: every API request)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="run the agent (what the systemd unit starts)",
        description="Run the agent in the foreground: elect, sample every `interval` "
        "seconds, migrate when needed. SIGTERM stops it cleanly (releasing "
        "leadership), SIGHUP re-reads the configuration.")
    run.add_argument("--single", action="store_true",
                     help="assume this is the only agent (no pmxcfs election); for labs")
    run.add_argument("--cycles", type=int, default=None, metavar="N",
                     help="stop after N cycles (testing)")
    lab = run.add_argument_group(
        "lab-only election timing",
        "For simulated clusters whose pmxcfs emulator uses a shortened lock lifetime "
        "(python -m pvesim serve --pmxcfs-lifetime). Never change them on a real "
        "cluster: the defaults are sized for pmxcfs's fixed 120 s lifetime.")
    lab.add_argument("--renew-interval", type=float, default=10.0, metavar="S",
                     help="renew the lock every S seconds (default: %(default)g)")
    lab.add_argument("--safety-bound", type=float, default=60.0, metavar="S",
                     help="stop acting when the last good renew is older than S seconds "
                     "(default: %(default)g; keep it at most half the lock lifetime)")
    lab.add_argument("--retry-interval", type=float, default=5.0, metavar="S",
                     help="a standby tries to take the lock at most every S seconds "
                     "(default: %(default)g)")

    plan = sub.add_parser(
        "plan", help="show what the balancer would do now, and why (no action)",
        description="Sample the cluster once (EMAs warmed from PVE's RRD), run the "
        "policy and print the decision with the numbers behind it. Starts nothing; "
        "exit status 0 whether or not a migration would happen.")
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser(
        "status", help="leader, node table with CPU EMAs and thresholds, last decisions",
        description="Show the leader's published status (PVE_ROOT/pve-balancer/status.json) "
        "and, if the API answers, one live sample.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--no-live", action="store_true", help="do not ask the API")

    check = sub.add_parser(
        "check-config", help="validate a configuration file",
        description="Print every problem with file:line. Exit 1 on a fatal problem "
        "(the agent would keep its previous configuration), 0 otherwise (warnings "
        "are printed).")
    check.add_argument("file", nargs="?", type=Path, default=None,
                       help="file to check (default: the configuration in use)")

    setup = sub.add_parser(
        "setup", help="create the API token, role, user and default configuration",
        description="One-time cluster set-up (run on one node; safe to repeat).")
    setup.add_argument("--if-possible", action="store_true",
                       help="do nothing (exit 0) when this node cannot do it now")
    setup.add_argument("--remove", action="store_true",
                       help="remove what setup created")
    return parser


# ------------------------------------------------------------------ helpers


def open_client(args: argparse.Namespace, paths: PveRoot, timeout: float = 10.0) -> PveClient:
    """The client `run`, `plan` and `status` use: the token file and the CA
    of the PVE root; every failure is a `PveError` that names its cause."""
    token = open_token(paths.token)
    return connect(args.api_url, token, verify=str(paths.ca), timeout=timeout,
                   token_file=paths.token)


def make_election(args: argparse.Namespace, paths: PveRoot, single: bool,
                  clock: SystemClock, calls: BoundedCalls | None = None) -> Election:
    if single:
        return AlwaysLeader()
    try:
        return PmxcfsElection(
            paths.root, args.node, clock=clock, calls=calls,
            renew_interval=getattr(args, "renew_interval", 10.0),
            safety_bound=getattr(args, "safety_bound", 60.0),
            retry_interval=getattr(args, "retry_interval", 5.0))
    except ValueError as exc:
        raise SystemExit(f"pve-balancer: election timing: {exc}") from exc


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def _gib(b: float) -> str:
    return f"{b / (1 << 30):7.1f}G"


def _age(now: float, then: object) -> str:
    if not isinstance(then, int | float):
        return "unknown"
    return f"{duration(now - float(then))} ago"


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))


def node_table(snapshot: Snapshot | None, emas: dict[str, float | None],
               config: Config, out: TextIO, fallback: list[dict[str, Any]] | None = None) -> None:
    """The node table; node names are escaped (`display.display_safe`)."""
    out.write(f"{'NODE':<16}{'STATE':<13}{'CPU':>7}{'CPU EMA':>9}{'MEM':>9}{'MAXMEM':>9}"
              f"{'MEM%':>8}\n")
    safe_emas = {display_safe(k): v for k, v in emas.items()}
    rows: list[tuple[str, str, float | None, int, int]] = []
    if snapshot is not None:
        for n in snapshot.nodes:
            state = "maintenance" if n.maintenance else ("online" if n.online else "offline")
            rows.append((display_safe(n.name), state, n.cpu, n.mem, n.maxmem))
    else:
        for item in fallback or []:
            state = "maintenance" if item.get("maintenance") else (
                "online" if item.get("online") else "offline")
            rows.append((display_safe(item.get("name")), state, item.get("cpu"),
                         int(item.get("mem") or 0), int(item.get("maxmem") or 0)))
    for name, state, cpu, mem, maxmem in rows:
        frac = mem / maxmem if maxmem else None
        out.write(f"{name:<16}{state:<13}{_pct(cpu):>7}{_pct(safe_emas.get(name)):>9}"
                  f"{_gib(mem):>9}{_gib(maxmem):>9}{_pct(frac):>8}\n")
    out.write(f"thresholds: cpu_max {100 * config.cpu_max:.0f}% (EMA), memory_max "
              f"{100 * config.memory_max:.0f}%, safety margin {100 * config.safety_margin:.0f}%"
              f", proactive above {config.proactive_factor:g} x mean memory and mean + "
              f"{100 * config.proactive_margin:.0f} points\n")


# ------------------------------------------------------------------ commands


def cmd_check_config(args: argparse.Namespace, paths: PveRoot, out: TextIO) -> int:
    path: Path = args.file or paths.config
    if not path.exists():
        out.write(f"{path}: no such file (an agent starting now uses the defaults; a running "
                  "agent keeps its last good configuration)\n")
        return 0 if args.file is None else 1
    result = load_config(path)
    for problem in result.problems:
        level = "error" if problem.fatal else "warning"
        out.write(f"{problem} [{level}]\n")
    if result.config is None:
        out.write(f"{path}: rejected ({len(result.errors)} error(s)); a running agent keeps "
                  "its previous configuration\n")
        return 1
    warn = f" with {len(result.warnings)} warning(s)" if result.warnings else ""
    out.write(f"{path}: OK{warn}\n")
    return 0


def _load_for_command(paths: PveRoot) -> Config:
    result = load_config(paths.config)
    for problem in result.problems:
        log.warning("%s", problem)
    if result.config is None:
        raise SystemExit(f"pve-balancer: {paths.config} has errors; run check-config")
    return result.config


def plan_document(plan: Plan) -> dict[str, Any]:
    d = plan.decision
    migration = asdict(d.migration) if d.migration is not None else None
    if migration is not None:
        migration["mode"] = d.migration.mode.value if d.migration else None
    return {
        "time": plan.snapshot.time,
        "decision": {"reason": d.reason, "mode": d.mode.value if d.mode else None,
                     "migration": migration, "thresholds": d.thresholds},
        "nodes": [{"name": n.name, "online": n.online, "maintenance": n.maintenance,
                   "cpu": n.cpu, "cpu_ema": plan.estimates.node_cpu.get(n.name),
                   "maxcpu": n.maxcpu, "mem": n.mem, "maxmem": n.maxmem,
                   "mem_fraction": n.mem_fraction} for n in plan.snapshot.nodes],
        "cpu_ready": plan.estimates.node_cpu_ready,
        "migrations_running": list(plan.snapshot.in_flight()),
        "backup_running": plan.snapshot.backup_running,
        "next_backup_in": plan.snapshot.next_backup_in,
        "unmovable": {str(k): v for k, v in plan.unmovable.items()},
        "config": plan.config.as_dict(),
        "api_requests": plan.requests,
    }


def cmd_plan(args: argparse.Namespace, paths: PveRoot, out: TextIO) -> int:
    config = _load_for_command(paths)
    if config.seed is None:
        # The same cluster gives the same plan: an operator comparing two
        # runs (or a plan with what followed) sees a change, not chance.
        config = replace(config, seed=PLAN_SEED)
    client = open_client(args, paths)
    env = PveEnvironment(node=args.node, connect=lambda: client, election=AlwaysLeader())
    plan = Agent(env, ConfigSource.fixed(config)).plan()
    if args.json:
        out.write(json.dumps(plan_document(plan), indent=2, sort_keys=True) + "\n")
        return 0
    d = plan.decision
    out.write(f"decision: {display_safe(d.reason)}\n")
    out.write(f"mode: {d.mode.value if d.mode else 'none'}\n")
    m = d.migration
    if m is not None:
        out.write(f"migration: vm {m.vmid} ({display_safe(m.name)}) {display_safe(m.source)} "
                  f"-> {display_safe(m.target)}"
                  f"{' (HA)' if m.ha_managed else ''}\n")
        for label, node, before, after in (("source", m.source, m.source_before, m.source_after),
                                           ("target", m.target, m.target_before, m.target_after)):
            out.write(f"  {label} {display_safe(node)}: cpu {_pct(before.cpu).strip()} -> "
                      f"{_pct(after.cpu).strip()}, memory {_pct(before.mem_fraction).strip()} "
                      f"-> {_pct(after.mem_fraction).strip()}\n")
    if not plan.estimates.node_cpu_ready:
        out.write("note: CPU EMAs are not warmed (no RRD history); CPU mode cannot fire yet\n")
    node_table(plan.snapshot, dict(plan.estimates.node_cpu), config, out)
    if plan.unmovable:
        out.write("cannot migrate live: " + ", ".join(
            f"vm {v} ({display_safe(why)})" for v, why in sorted(plan.unmovable.items())) + "\n")
    out.write(f"API requests: {plan.requests}\n")
    return 0


def status_code(state: str, live_error: str) -> int:
    """The exit status of `status` (see STATUS_*): the leader's state first;
    with a leader in good health, a failed live sample."""
    if state == "leading":
        return STATUS_API_UNREACHABLE if live_error else STATUS_OK
    return STATUS_STALE if state == "stale" else STATUS_NO_LEADER


STATE_NAMES = {STATUS_OK: "ok", STATUS_STALE: "stale", STATUS_NO_LEADER: "no-leader",
               STATUS_API_UNREACHABLE: "api-unreachable"}


def cmd_status(args: argparse.Namespace, paths: PveRoot, out: TextIO) -> int:
    now = time.time()
    doc = read_status(paths.status)
    result = load_config(paths.config)
    config = result.config or Config()
    snapshot: Snapshot | None = None
    live_error = ""
    if not args.no_live:
        try:
            client = open_client(args, paths, timeout=5.0)
            snapshot, _ = client.sample(now)
        except PveError as exc:
            live_error = exc.sentence
    state = leader_state(doc, now)
    code = status_code(state, live_error)
    emas: dict[str, float | None] = {}
    if doc is not None:
        for item in doc.get("nodes") or []:
            if isinstance(item, dict) and isinstance(item.get("cpu_ema"), int | float):
                emas[str(item.get("name"))] = float(item["cpu_ema"])
    if args.json:
        out.write(json.dumps({"status": doc, "state": STATE_NAMES[code], "live": None
                              if snapshot is None else {
            "nodes": [asdict(n) for n in snapshot.nodes],
            "migrations_running": list(snapshot.in_flight())},
            "live_error": live_error or None}, indent=2, sort_keys=True, default=str) + "\n")
        return code
    if doc is None:
        out.write(f"leader: none (no {paths.status}; is any agent running?)\n")
    elif state in ("none", "released"):
        who = display_safe(doc.get("released_by") or "the last leader")
        out.write(f"leader: none ({who} stopped at {_when(doc.get('released'))} and gave up "
                  "the lock; a running standby takes over within seconds)\n")
    else:
        updated = doc.get("updated")
        stale = state == "stale"
        out.write(f"leader: {display_safe(doc.get('leader'))} since {_when(doc.get('since'))} "
                  f"(updated {_age(now, updated)}{'; STALE: leader may be gone' if stale else ''}"
                  ")\n")
    if doc is not None and doc.get("last_action"):
        out.write(f"last cycle: {display_safe(doc.get('last_action'))}\n")
    if snapshot is None and live_error:
        out.write(f"live sample unavailable: {display_safe(live_error)}\n")
    if snapshot is not None and snapshot.in_flight():
        out.write("migrations running: " + ", ".join(map(display_safe, snapshot.in_flight()))
                  + "\n")
    out.write("\n")
    node_table(snapshot, emas, config, out,
               fallback=[n for n in (doc or {}).get("nodes") or [] if isinstance(n, dict)])
    decisions = (doc or {}).get("decisions") or []
    if decisions:
        out.write("\nlast decisions:\n")
        for item in decisions[-10:]:
            if not isinstance(item, dict):
                continue
            mode, vmid, source, target, outcome = (display_safe(item.get(k, "?")) for k in (
                "mode", "vmid", "source", "target", "result"))
            out.write(f"  {_when(item.get('time'))}  {mode:<9} vm {vmid} {source} -> "
                      f"{target}: {outcome}\n")
    return code


def cmd_run(args: argparse.Namespace, paths: PveRoot) -> int:
    from .daemon import Daemon  # noqa: PLC0415 - only the daemon needs signals/notify

    # One worker for the daemon's calls on /etc/pve: when pmxcfs holds the
    # configuration's stat, the election knows at once that it does not answer.
    calls = BoundedCalls()
    source = ConfigSource(paths.config, calls=calls)
    source.refresh(force=True)
    clock = SystemClock()
    election = make_election(args, paths, args.single, clock, calls)

    env = PveEnvironment(node=args.node, connect=lambda: open_client(args, paths),
                         election=election, clock=clock,
                         status=StatusWriter(paths.status, args.node))
    daemon = Daemon(Agent(env, source), clock)
    daemon.install_signal_handlers()
    log.info("pve-balancer %s starting on node %s (root %s, API %s)", __version__, args.node,
             paths.root, args.api_url)
    return daemon.run(max_cycles=args.cycles)


def cmd_setup(args: argparse.Namespace, paths: PveRoot) -> int:
    return provision.run_setup(paths.root, if_possible=args.if_possible, remove=args.remove)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    if args.node is None:
        args.node = short_hostname()
    paths = PveRoot(args.pve_root, args.config)
    setup_logging(args.verbose)
    try:
        code = _dispatch(parser, args, paths, out)
        out.flush()
        return code
    except BrokenPipeError:
        # The reader is gone (`plan | head`): nothing left to say to it, and
        # no traceback. Python would flush stdout again at exit: point it
        # at /dev/null first.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except PveError as exc:
        sys.stderr.write(f"pve-balancer: {display_safe(exc.sentence)}\n")
        return 1
    except TokenError as exc:
        sys.stderr.write(f"pve-balancer: {display_safe(exc)}\n")
        return 1


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, paths: PveRoot,
              out: TextIO) -> int:
    if args.command == "check-config":
        return cmd_check_config(args, paths, out)
    if args.command == "plan":
        return cmd_plan(args, paths, out)
    if args.command == "status":
        return cmd_status(args, paths, out)
    if args.command == "run":
        return cmd_run(args, paths)
    if args.command == "setup":
        return cmd_setup(args, paths)
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover - parser.error exits
