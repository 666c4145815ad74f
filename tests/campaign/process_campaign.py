"""What the process-level campaign cases share: a lab whose hotspot comes
early, a way to stop the leader at a chosen step of its cycle, and the
verdicts read from the simulator's request log and migration list.

Stopping at a step deterministically: the simulator holds the answer to
one request (a `latency` fault with `count=1`) and the test watches the
fault's `fired` counter through the control API. Once it has fired, the
agent is inside that request and cannot have gone further: the SIGKILL
lands exactly there. A held request that the killed agent never sees
answered is still carried out by the server when the hold ends, as PVE
would; every step is chosen so that the held request changes nothing
(a GET).

Times in verdicts are the simulator's (request log, migration list), so
they do not depend on how the agents' clocks compare with it.
"""

from __future__ import annotations

import itertools
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.lab import FAST, LAB_SCENARIO, Agent, ProcessLab, Timing, wait_for

HOTSPOT_AT = 25.0
"""When vm 107 grows on pve1 (the lab scenario's step, brought forward)."""
INTERVAL = 2.0
STAT_INTERVAL = 10.0
"""The simulator publishes node statistics this often (as PVE: ~10 s)."""
HOLD = 120.0
"""How long a held answer is held: far longer than the test needs."""


def write_campaign_scenario(directory: Path, hotspot_at: float = HOTSPOT_AT,
                            balancer_config: dict[str, Any] | None = None) -> Path:
    """The lab scenario starting now, with the hotspot at `hotspot_at` s."""
    doc = yaml.safe_load(LAB_SCENARIO.read_text(encoding="utf-8"))
    doc["start_time"] = int(time.time())
    for guest in doc["guests"]:
        for step in (guest.get("demand") or {}).get("steps") or []:
            step["at"] = hotspot_at
    doc["balancer_config"] = {**(doc.get("balancer_config") or {}), "interval": INTERVAL,
                              **(balancer_config or {})}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Step:
    """A point in the leader's cycle, and the request whose held answer
    marks it (None: the point is seen in the request log instead)."""

    name: str
    method: str
    path_regex: str | None
    doc: str


STEPS = {
    s.name: s for s in (
        Step("after-sampling", "GET", r"/nodes/[^/]+/qemu/\d+/migrate",
             "sampled and decided; its preconditions GET is held, nothing POSTed"),
        Step("after-preconditions", "GET", r"/version",
             "preconditions read; the /version GET right before the POST is held"),
        Step("after-post", "GET", r"/nodes/[^/]+/tasks/[^/]+/status",
             "the POST was answered; the first task poll is held"),
        Step("during-follow", "GET", None,
             "the migration is being followed: killed after its first answered poll"),
    )
}


def secret_of(lab: ProcessLab) -> str:
    return str(lab.conn["token_secret"])


def hold(lab: ProcessLab, step: Step) -> int | None:
    if step.path_regex is None:
        return None
    fault = lab.ctl.add_fault(kind="latency", method=step.method, path_regex=step.path_regex,
                              seconds=HOLD, count=1)
    return int(fault["id"])


def fired(lab: ProcessLab, fault_id: int) -> bool:
    return any(f["id"] == fault_id and f["fired"] >= 1 for f in lab.ctl.faults())


def polled_once_after_post(lab: ProcessLab) -> bool:
    entries = lab.requests()
    post = next((i for i, e in enumerate(entries)
                 if e["method"] == "POST" and e["path"].endswith("/migrate")), None)
    return post is not None and any(
        e["method"] == "GET" and e["path"].endswith("/status") and e["status"] == 200
        for e in entries[post + 1:])


def kill_at(lab: ProcessLab, leader: Agent, step: Step, limit: float = 90.0) -> float:
    """SIGKILL `leader` at `step`; returns the kill's simulator time."""
    fault_id = hold(lab, step)
    if fault_id is None:
        wait_for(f"{leader.node} to poll its task", lambda: polled_once_after_post(lab), limit,
                 step=0.05)
    else:
        wait_for(f"{leader.node} to reach {step.name}", lambda: fired(lab, fault_id), limit,
                 step=0.05)
    leader.signal(signal.SIGKILL)
    leader.wait(10)
    return lab.sim_now()


@dataclass(frozen=True)
class Verdict:
    posts: list[dict[str, Any]]
    migrations: list[dict[str, Any]]

    def overlapping(self) -> list[str]:
        out = []
        moves = sorted(self.migrations, key=lambda m: m["start"])
        for a, b in itertools.pairwise(moves):
            if b["start"] < a["end"]:
                out.append(f"vm {b['vmid']} started at {b['start']:.1f} while vm {a['vmid']} "
                           f"ran until {a['end']:.1f}")
        return out

    def early_posts(self, settle: float = STAT_INTERVAL) -> list[str]:
        """POSTs while a migration ran or before the statistics of its end
        could have been published (`settle` s after it)."""
        out = []
        for p in self.posts:
            for m in self.migrations:
                if m["start"] < p["time"] < m["end"] + settle and \
                        abs(p["time"] - m["start"]) > 0.5:
                    out.append(f"POST {p['path']} at {p['time']:.1f} while vm {m['vmid']} "
                               f"migrated [{m['start']:.1f}, {m['end']:.1f}] (+{settle:g} s)")
        return out


def verdict(lab: ProcessLab) -> Verdict:
    return Verdict(posts=lab.migrate_posts(), migrations=lab.migrations())


def outputs(lab: ProcessLab) -> dict[str, str]:
    """Every output the agents produced: their stdout+stderr logs and the
    status file they publish."""
    out: dict[str, str] = {}
    for agent in lab.all_agents():
        out[f"agent {agent.node} pid {agent.proc.pid}"] = agent.text()
        if agent.log_path.exists():
            out[str(agent.log_path)] = agent.log_path.read_text(errors="replace")
    for node in lab.nodes:
        status = lab.pve_root(node) / "pve-balancer" / "status.json"
        if status.exists():
            out[str(status)] = status.read_text(errors="replace")
    return out


def start_lab(workdir: Path, timing: Timing = FAST,
              balancer_config: dict[str, Any] | None = None) -> ProcessLab:
    scenario = write_campaign_scenario(workdir, balancer_config=balancer_config)
    return ProcessLab.start(workdir / "lab", scenario, timing)
