"""ProxLB 2.3.0, unmodified, as a separate process against the simulator's
HTTPS API, with the simulated clock driven around it.

ProxLB is what many operators install instead of a balancer like ours, so
the quality benchmark measures it on the same scenarios with the same seed.
It runs from its own virtualenv (`.venv-bench`, built by `dev/peers-venv`
from `bench/requirements-peers.txt`); the shipped agent never depends on it.

How a run is driven, so that the figures mean what they would on a cluster:

- the Simulator is built exactly as the stepped baseline builds it (same
  scenario, seed and warm-up; one more API token, whose secret comes from
  the token generator and leaves the physics untouched) and served over
  HTTPS on 127.0.0.1 by pvesim's own listeners, with its CA handed to
  ProxLB through `REQUESTS_CA_BUNDLE` (ProxLB verifies certificates);
- ProxLB's token is granted what it asks for at start (`Datastore.Audit`,
  `Sys.Audit`, `VM.Audit`, `VM.Migrate`);
- ProxLB's daemon sleeps its schedule in wall time (12 h by default), so it
  runs with `daemon: False` and the driver starts it once per scheduled
  run, the schedule counted in simulated time from the end of the previous
  run, as its daemon loop counts it;
- while ProxLB collects and decides, the simulated clock stands still (a
  real cluster would move on by a few seconds; the simulator does not need
  to, and it keeps runs reproducible); while any migration is in flight it
  advances in the baseline's 5 s steps, so migrations take their simulated
  duration and their cost (memory on both nodes) is felt;
- ProxLB polls a migration task every 5 s of its own clock; its process
  runs under libfaketime at `SPEEDUP` times wall speed so those waits do
  not take hours of wall time. Its code is not touched; its API timeout is
  raised (a documented option) so that the speed-up does not turn ordinary
  answers into timeouts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pvesim.cluster import Simulator
from pvesim.scenario import Scenario
from pvesim.server import ClusterServer
from pvesim.specs import TokenSpec
from pvesim.tls import ensure_pki

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-bench"
PROXLB_VERSION = "2.3.0"
PROXLB_TOKEN = "proxlb@pve!balancer"
PROXLB_PRIVILEGES = ["Datastore.Audit", "Sys.Audit", "VM.Audit", "VM.Migrate"]
STEP = 5.0
SPEEDUP = 20
FAKETIME_LIBS = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
)


class ProxlbUnavailableError(RuntimeError):
    """The bench virtualenv or libfaketime is missing (dev/peers-venv)."""


def proxlb_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.is_file():
        raise ProxlbUnavailableError(f"{python} not found: run dev/peers-venv")
    return python


def faketime_lib() -> Path:
    for lib in FAKETIME_LIBS:
        if lib.is_file():
            return lib
    raise ProxlbUnavailableError("libfaketime not found: run dev/peers-venv (apt package faketime)")


def with_proxlb_token(scenario: Scenario) -> Scenario:
    """The scenario with ProxLB's token added. Tokens the scenario leaves
    to the defaults keep their secrets (the generator draws in order)."""
    from pvesim.cluster import DEFAULT_TOKENS

    specs = list(scenario.tokens) if scenario.tokens is not None else [
        TokenSpec(tid, None, {"/": sorted(privs)}) for tid, privs in DEFAULT_TOKENS.items()]
    if all(t.token_id != PROXLB_TOKEN for t in specs):
        specs.append(TokenSpec(PROXLB_TOKEN, None, {"/": list(PROXLB_PRIVILEGES)}))
    scenario.tokens = specs
    return scenario


@dataclass(frozen=True)
class Setting:
    """One ProxLB configuration the benchmark compares."""

    name: str
    method: str = "memory"  # ProxLB's default balancing method
    interval_hours: float = 12.0  # ProxLB's default schedule

    def config(self, api_host: str, secret: str) -> dict[str, Any]:
        """ProxLB's configuration: its defaults with balancing switched on
        for VMs and containers (ProxLB ships with `enable: False` and no
        guest types; its README's example enables both), the benchmark's
        token, and a long API timeout (see the module docstring)."""
        user, _, token_name = PROXLB_TOKEN.partition("!")
        return {
            "proxmox_api": {
                "hosts": [api_host], "user": user, "token_id": token_name,
                "token_secret": secret, "ssl_verification": True, "timeout": 600,
            },
            "balancing": {"enable": True, "balance_types": ["vm", "ct"],
                          "method": self.method},
            "service": {"daemon": False, "log_level": "INFO"},
        }


SETTINGS = {
    "proxlb-memory-12h": Setting("proxlb-memory-12h"),
    "proxlb-cpu-12h": Setting("proxlb-cpu-12h", method="cpu"),
    "proxlb-memory-1h": Setting("proxlb-memory-1h", interval_hours=1.0),
}


@dataclass
class Invocation:
    """One ProxLB run: when it started and ended (simulated), its exit code,
    the POSTs it made, and its last output lines."""

    start: float
    end: float
    returncode: int
    wall_seconds: float
    requests: int
    migrate_posts: int
    errors: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)


def _migrating(sim: Simulator) -> bool:
    return bool(sim.migrations) or bool(sim.pending_ha)


class ServedSimulator:
    """`sim` served over HTTPS on 127.0.0.1 by pvesim's listeners, with a
    PKI in a temporary directory; the clock is left to the caller."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.dir = Path(tempfile.mkdtemp(prefix="pvesim-peers-"))
        self.pki = ensure_pki(self.dir / "pki", list(sim.node_names))
        self.servers = ClusterServer(sim, self.pki, list(sim.node_names))

    def __enter__(self) -> ServedSimulator:
        self.servers.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.servers.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def api_host(self) -> str:
        url = self.servers.urls()[self.sim.node_names[0]]
        return url.removeprefix("https://")


Command = list[str]
"""A peer's command line; `{config}` is replaced by its configuration file's
path. Without one, ProxLB from the bench virtualenv under libfaketime."""


def invoke(served: ServedSimulator, setting: Setting, *, end: float,
           timeout: float = 1800.0, command: Command | None = None) -> Invocation:
    """Run ProxLB (or `command`) once against `served`, advancing the clock
    in 5 s steps while a migration is in flight (never beyond `end`)."""
    sim = served.sim
    cfg = served.dir / f"{setting.name}.yaml"
    cfg.write_text(yaml.safe_dump(setting.config(served.api_host, sim.tokens[PROXLB_TOKEN])))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["REQUESTS_CA_BUNDLE"] = str(served.pki.ca_cert_path)
    if command is None:
        argv = [str(proxlb_python()), "-m", "proxlb", "-c", str(cfg)]
        env.update({"LD_PRELOAD": str(faketime_lib()), "FAKETIME": f"+0 x{SPEEDUP}",
                    "FAKETIME_DONT_RESET": "1"})
    else:
        argv = [a.replace("{config}", str(cfg)) for a in command]
    log_start = len(sim.request_log)
    out_path = served.dir / f"{setting.name}.out"
    t0, w0 = sim.now, time.perf_counter()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=served.dir)
        try:
            while proc.poll() is None:
                if time.perf_counter() - w0 > timeout:
                    proc.kill()
                    break
                if sim.now < end - 1e-6 and _migrating(sim):
                    sim.advance(min(STEP, end - sim.now))
                elif sim.now >= end - 1e-6 and _migrating(sim):
                    # the run is over: what is still moving stays as it is
                    proc.terminate()
                    break
                else:
                    time.sleep(0.005)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = out_path.read_text(errors="replace").splitlines()
    records = sim.request_log[log_start:]
    mine = [r for r in records if r.token_id == PROXLB_TOKEN]
    return Invocation(
        start=t0, end=sim.now, returncode=proc.returncode,
        wall_seconds=round(time.perf_counter() - w0, 2), requests=len(mine),
        migrate_posts=sum(1 for r in mine if r.method == "POST" and r.path.endswith("/migrate")),
        errors=[ln for ln in lines if any(w in ln for w in ("ERROR", "CRITICAL", "Traceback"))],
        tail=lines[-5:],
    )


def run_schedule(sim: Simulator, setting: Setting, *, duration: float,
                 progress: Callable[[str], None] | None = None,
                 command: Command | None = None) -> list[Invocation]:
    """`duration` simulated seconds from now with ProxLB on its schedule: a
    run at once, then one `interval` after each run ends, as its daemon
    loop would, in the baseline's 5 s steps."""
    end = sim.now + duration
    runs: list[Invocation] = []
    with ServedSimulator(sim) as served:
        while sim.now < end - 1e-6:
            inv = invoke(served, setting, end=end, command=command)
            runs.append(inv)
            if progress is not None:
                progress(f"  {setting.name}: run {len(runs)} at "
                         f"{(inv.start - sim.metrics.start) / 3600:5.2f} h: exit {inv.returncode}, "
                         f"{inv.migrate_posts} migrations, {inv.wall_seconds:.1f} s wall")
            wait = setting.interval_hours * 3600
            # the next run falls on the baseline's step grid
            target = min(end, sim.now + wait)
            steps = round((target - sim.now) / STEP)
            if steps > 0:
                sim.advance(steps * STEP)
            elif sim.now < end - 1e-6:
                sim.advance(min(STEP, end - sim.now))
    return runs
