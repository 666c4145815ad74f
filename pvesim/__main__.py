"""`python -m pvesim`: run a simulated cluster.

    serve --scenario FILE --connection-file OUT.json [--speed X] [--seed N]
          [--state-dir DIR] [--metrics-out M.json] [--plot P.png] [--pmxcfs]
          [--isolated-api timeout|local] [--pmxcfs-lifetime S]
        The whole lab in real time (times --speed): one HTTPS API per node, the
        control endpoint, and per node a directory laid out like /etc/pve.
        The connection file appears (atomically) only once everything
        listens; the process runs until SIGTERM/SIGINT and exits 0.

    run --scenario FILE --duration SECONDS [--seed N] [--step S]
        --metrics-out M.json [--plot P.png]
        A stepped run with no agent (baselines, benchmarks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pvesim.cluster import Simulator
from pvesim.control import ControlServer, SimControl
from pvesim.faults import FaultInjector
from pvesim.pmxcfs import EmulatorError, PmxcfsEmulator
from pvesim.realtime import RealtimeDriver
from pvesim.scenario import load_scenario
from pvesim.server import ClusterServer
from pvesim.tls import ensure_pki

log = logging.getLogger("pvesim")

AGENT_TOKEN = "pve-balancer@pve!agent"


class UsageError(Exception):
    """Bad command-line input; reported as one line, exit status 2."""


def _build_simulator(
    scenario_path: Path, seed: int, start_at_wall_clock: bool = False
) -> Simulator:
    """Load the scenario and build its simulator. A real-time `serve` starts
    the simulated clock at the wall clock unless the scenario pins
    `start_time`, so task times and RRD history line up with the clients'
    clocks as they would on a real cluster; stepped runs keep the scenario's
    fixed start so they stay reproducible."""
    if not scenario_path.is_file():
        raise UsageError(f"scenario file {scenario_path}: not found")
    try:
        scenario = load_scenario(scenario_path)
    except ValueError as exc:  # ScenarioError names file and key
        raise UsageError(str(exc)) from exc
    if start_at_wall_clock and not _pins_start_time(scenario_path):
        scenario.start_time = float(int(time.time()))
    return Simulator(scenario, seed=seed)


def _pins_start_time(scenario_path: Path) -> bool:
    doc = yaml.safe_load(scenario_path.read_text(encoding="utf-8"))
    return isinstance(doc, dict) and "start_time" in doc


def _balancer_config(scenario_path: Path) -> dict[str, Any] | None:
    """The scenario's optional `balancer_config:` mapping, read straight from
    the YAML (it is the agent's business, not the simulator's)."""
    doc = yaml.safe_load(scenario_path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("balancer_config") is None:
        return None
    value = doc["balancer_config"]
    if not isinstance(value, dict):
        raise UsageError(f"{scenario_path}: balancer_config must be a mapping")
    return value


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _put(path: Path, data: bytes, mode: int, on_pmxcfs: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if on_pmxcfs:
        # pmxcfs fixes modes itself (0600 under priv/, 0640 elsewhere) and
        # refuses chmod to anything else: write in place.
        path.write_bytes(data)
    else:
        _write_atomic(path, data, mode)


def populate_pve_root(
    root: Path,
    ca_cert: Path,
    token_id: str,
    secret: str,
    balancer_config: dict[str, Any] | None,
    on_pmxcfs: bool = False,
) -> None:
    """Write what the agent reads from /etc/pve into `root`."""
    if not on_pmxcfs:
        (root / "priv").mkdir(parents=True, exist_ok=True)
        os.chmod(root / "priv", 0o700)
    _put(root / "pve-root-ca.pem", ca_cert.read_bytes(), 0o644, on_pmxcfs)
    _put(root / "priv" / "pve-balancer.token", f"{token_id}={secret}\n".encode(), 0o600,
         on_pmxcfs)
    if balancer_config is not None:
        text = yaml.safe_dump(balancer_config, sort_keys=False)
        _put(root / "balancer.yaml", text.encode(), 0o644, on_pmxcfs)


def layout_pve_roots(
    state_dir: Path,
    node_names: list[str],
    ca_cert: Path,
    token_id: str,
    secret: str,
    balancer_config: dict[str, Any] | None,
) -> dict[str, Path]:
    """Per node, a plain directory laid out like that node's /etc/pve."""
    roots: dict[str, Path] = {}
    for node in node_names:
        root = state_dir / "etc-pve" / node
        populate_pve_root(root, ca_cert, token_id, secret, balancer_config)
        roots[node] = root
    return roots


class QuorumMirror:
    """Keeps the pmxcfs emulator's per-node quorum equal to the simulated
    cluster's (a cut or powered-off node loses quorum in both)."""

    def __init__(self, sim: Simulator, emulator: PmxcfsEmulator, interval: float = 0.2) -> None:
        self.sim = sim
        self.emulator = emulator
        self.interval = interval
        self._known: dict[str, bool] = {n: True for n in sim.node_names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pvesim-quorum", daemon=True)

    def sync(self) -> None:
        with self.sim.lock:
            now = {n: bool(self.sim.quorate(n)) for n in self.sim.node_names}
        for node, quorate in now.items():
            if self._known.get(node) != quorate:
                self.emulator.set_quorate(node, quorate)
                self._known[node] = quorate
                log.info("pmxcfs: %s %s quorum", node, "regained" if quorate else "lost")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except EmulatorError as exc:
                log.error("pmxcfs quorum update failed: %s", exc)

    def start(self) -> None:
        self.sync()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _plot_writer(plot: str | None) -> Any:
    """Import the plotting module up front, so a missing matplotlib fails
    the command at start and not after a long run."""
    if not plot:
        return None
    try:
        from pvesim.plot import write_png  # noqa: PLC0415 - matplotlib loads slowly
    except ImportError as exc:
        raise UsageError(f"--plot {plot}: plotting unavailable: {exc}") from exc
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"--plot {plot}: matplotlib is not installed")
    return write_png


def _write_metrics(
    sim: Simulator, metrics_out: Path | None, plot: Path | None, write_png: Any
) -> None:
    if metrics_out is not None:
        with sim.lock:
            data = sim.metrics.to_dict()
        _write_atomic(metrics_out, (json.dumps(data, indent=2) + "\n").encode(), 0o644)
    if plot is not None and write_png is not None:
        with sim.lock:
            write_png(sim, plot)


def _listener_probe(sim: Simulator, args: argparse.Namespace) -> Callable[[str], bool]:
    """When a node's listener answers. `timeout` (default): only while the
    node is powered and networked — seen from the rest of the cluster, an
    isolated node is silent. `local`: whenever it is powered — the listener
    is then that node's localhost API, which on PVE keeps answering its own
    agent after a network cut (with quorum lost, other nodes 596)."""
    if args.isolated_api == "local":
        return lambda name: bool(sim.node(name).powered)
    return sim.node_reachable


def cmd_serve(args: argparse.Namespace) -> int:
    scenario_path = Path(args.scenario)
    write_png = _plot_writer(args.plot)
    sim = _build_simulator(scenario_path, args.seed, start_at_wall_clock=True)
    balancer_config = _balancer_config(scenario_path)
    tokens: dict[str, str] = dict(sim.tokens)
    if AGENT_TOKEN not in tokens:
        raise UsageError(f"scenario defines no token {AGENT_TOKEN}")
    node_names = list(sim.node_names)

    own_state_dir = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="pvesim-")) if own_state_dir else Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    servers: ClusterServer | None = None
    control_server: ControlServer | None = None
    driver: RealtimeDriver | None = None
    emulator: PmxcfsEmulator | None = None
    mirror: QuorumMirror | None = None
    try:
        pki = ensure_pki(state_dir / "pki", node_names)
        if args.pmxcfs:
            emulator = PmxcfsEmulator(
                state_dir / "pmxcfs", node_names, cluster_name=sim.cluster_name,
                log_path=state_dir / "pmxcfs.log", lifetime=args.pmxcfs_lifetime,
            )
            try:
                emulator.start()
            except EmulatorError as exc:
                raise UsageError(f"--pmxcfs: {exc}") from exc
            roots = dict(emulator.mounts)
            # one shared tree: written once, visible on every node's mount
            populate_pve_root(
                roots[node_names[0]], pki.ca_cert_path, AGENT_TOKEN, tokens[AGENT_TOKEN],
                balancer_config, on_pmxcfs=True,
            )
            mirror = QuorumMirror(sim, emulator)
            mirror.start()
        else:
            roots = layout_pve_roots(
                state_dir, node_names, pki.ca_cert_path, AGENT_TOKEN, tokens[AGENT_TOKEN],
                balancer_config,
            )
        injector = FaultInjector(sim, seed=args.seed)
        servers = ClusterServer(injector, pki, node_names, reachable=_listener_probe(sim, args))
        driver = RealtimeDriver(sim, speed=args.speed)
        control_token = secrets.token_hex(16)
        control_server = ControlServer(SimControl(sim, injector, driver), control_token)
        servers.start()
        control_server.start()
        driver.start()
        urls = servers.urls()
        connection = {
            "nodes": {
                n: {"api_url": urls[n], "pve_root": str(roots[n])} for n in node_names
            },
            "api_url": urls[node_names[0]],
            "token_id": AGENT_TOKEN,
            "token_secret": tokens[AGENT_TOKEN],
            "tokens": tokens,
            "ca_cert": str(pki.ca_cert_path),
            "control_url": control_server.url,
            "control_token": control_token,
            "state_dir": str(state_dir),
            "pmxcfs": bool(args.pmxcfs),
            "pmxcfs_lifetime": args.pmxcfs_lifetime if args.pmxcfs else None,
            "pmxcfs_control": str(emulator.control_path) if emulator is not None else None,
            "isolated_api": args.isolated_api,
            "speed": args.speed,
            "seed": args.seed,
            "pid": os.getpid(),
        }
        _write_atomic(
            Path(args.connection_file),
            (json.dumps(connection, indent=2) + "\n").encode(),
            0o600,
        )
        log.info("serving %d nodes; connection file %s", len(node_names), args.connection_file)
        while not stop.wait(0.5):
            if driver.error is not None:
                log.error("clock stopped after an error; shutting down")
                return 1
        return 0
    finally:
        if driver is not None:
            driver.stop()
        if servers is not None:
            servers.stop()
        if control_server is not None:
            control_server.stop()
        if mirror is not None:
            mirror.stop()
        if emulator is not None:
            emulator.stop()
        try:
            metrics_out = Path(args.metrics_out) if args.metrics_out else None
            plot = Path(args.plot) if args.plot else None
            _write_metrics(sim, metrics_out, plot, write_png)
        finally:
            if own_state_dir:
                shutil.rmtree(state_dir, ignore_errors=True)


def cmd_run(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        raise UsageError(f"--duration {args.duration}: must be > 0")
    if args.step <= 0:
        raise UsageError(f"--step {args.step}: must be > 0")
    write_png = _plot_writer(args.plot)
    sim = _build_simulator(Path(args.scenario), args.seed)
    started = time.monotonic()
    remaining = float(args.duration)
    while remaining > 1e-9:
        step = min(args.step, remaining)
        sim.advance(step)
        remaining -= step
    wall = time.monotonic() - started
    _write_metrics(
        sim, Path(args.metrics_out), Path(args.plot) if args.plot else None, write_png
    )
    print(
        f"simulated {args.duration:g} s in {wall:.1f} s wall; metrics: {args.metrics_out}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pvesim", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the cluster's API over HTTPS in real time")
    serve.add_argument("--scenario", required=True, help="scenario YAML file")
    serve.add_argument("--connection-file", required=True, help="where to write the JSON")
    serve.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--state-dir", help="keep PKI and /etc/pve trees here (default: temp)")
    serve.add_argument("--metrics-out", help="write metrics JSON here on exit")
    serve.add_argument("--plot", help="write a PNG plot here on exit")
    serve.add_argument(
        "--isolated-api", choices=("timeout", "local"), default="timeout",
        help="a node whose network is cut: its listener times out (default) or keeps "
             "answering as that node's localhost API",
    )
    serve.add_argument(
        "--pmxcfs", action="store_true",
        help="mount the pmxcfs emulator (FUSE, root) as each node's /etc/pve",
    )
    serve.add_argument(
        "--pmxcfs-lifetime", type=int, default=120, metavar="SECONDS",
        help="with --pmxcfs: lock lifetime in whole seconds (default: pmxcfs's 120; "
             "shorter only for fast failover tests)",
    )
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="stepped run without agents")
    run.add_argument("--scenario", required=True)
    run.add_argument("--duration", type=float, required=True, help="simulated seconds")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--step", type=float, default=5.0, help="simulated seconds per step")
    run.add_argument("--metrics-out", required=True)
    run.add_argument("--plot")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="pvesim: %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "speed", 1.0) <= 0:
        parser.error(f"--speed {args.speed}: must be > 0")
    if getattr(args, "pmxcfs_lifetime", 120) < 1:
        parser.error(f"--pmxcfs-lifetime {args.pmxcfs_lifetime}: must be >= 1")
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"pvesim: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
