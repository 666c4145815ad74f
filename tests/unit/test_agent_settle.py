"""Never move twice on one cause: after any migration ends, no decision on
node statistics older than its end.

PVE publishes node statistics about every 10 s (pvesim models the lag:
`stat_interval`, phase-shifted per node), and its API has no time stamp
for them; so a POST less than one publishing round after a migration's end
was decided on numbers from before it. The cases are those where this
term did not follow that migration to its end: someone else started it, a
standby took over from a leader killed right after its POST, the agent was
restarted on the same node, the POST's answer or the task status was lost.
The witness is the simulator: its task list (when each migration ended)
and its request log (when each POST came).
"""

from __future__ import annotations

from typing import Any

from pve_balancer.config import Config
from simlab.inprocess import InProcessLab as Lab
from simlab.inprocess import make_lab
from tests.term_start import first_decision

from .test_agent_cycle import memory_hot

STAT_ROUND = 10.0
"""pvesim's `stat_interval`: after this long every node has published."""

MIGRATIONS = ("qmigrate", "hamigrate")


def slow_link(scenario: dict[str, Any], bandwidth: str = "100MiB") -> dict[str, Any]:
    """The scenario with migrations slow enough to outlast several cycles
    (a 10 GiB guest takes about 100 s at 100 MiB/s)."""
    return {**scenario, "sim": {"migration_bandwidth": bandwidth}}


def posts_on_stale_statistics(lab: Lab) -> list[tuple[float, str, float]]:
    """Each POST that came less than a publishing round after a migration
    (any, by anyone) ended: (POST time, task, seconds after its end)."""
    ended = [(t.starttime, t.endtime, t.upid) for t in lab.sim.tasks
             if t.type in MIGRATIONS and t.endtime is not None]
    out = []
    for post in lab.migrate_posts():
        for start, end, upid in ended:
            # (a hamigrate ends at once: the task of this very POST is not news)
            if start < post.time and end <= post.time < end + STAT_ROUND:
                out.append((post.time, upid, post.time - end))
    return out


def migration_tasks(lab: Lab) -> list[Any]:
    return [t for t in lab.sim.tasks if t.type in MIGRATIONS]


def run_past_end(lab: Lab, vmid: int, after: float = 60.0) -> float:
    """Run until no migration of `vmid` is running, then `after` s more;
    returns when it ended."""
    assert lab.run_until(lambda: lab.sim.running_migration(vmid) is None, limit=900)
    ended = lab.sim.now
    lab.run(after)
    return ended


def test_a_foreign_migration_that_ended_is_waited_for() -> None:
    lab = make_lab(slow_link(memory_hot()), Config(seed=3))
    # An operator moves vm 101 off the hot node just as the agent starts.
    assert lab.sim.migrate(101, "pve2", online=True).startswith("UPID:")
    run_past_end(lab, 101)
    assert posts_on_stale_statistics(lab) == [], lab.sentences
    waited = [s for _, s in lab.sentences if "refresh after the migration of vm 101" in s]
    assert waited, "the settle pause follows a migration this agent did not start"


def test_a_standby_taking_over_after_the_post_waits_for_fresh_statistics() -> None:
    lab = make_lab(slow_link(memory_hot()), Config(seed=3))
    assert "started task" in first_decision(lab.agent).sentence
    [post] = lab.migrate_posts()
    vmid = int(post.path.split("/")[4])
    # The leader is killed right after its POST; pve2's agent takes over.
    successor = Lab.attach(lab.sim, Config(seed=3), node="pve2")
    run_past_end(successor, vmid)
    assert posts_on_stale_statistics(successor) == [], successor.sentences
    assert [p.path for p in successor.migrate_posts() if f"/{vmid}/" in p.path] == [post.path]


def test_a_restart_on_the_same_node_waits_for_fresh_statistics() -> None:
    lab = make_lab(slow_link(memory_hot()), Config(seed=3))
    assert "started task" in first_decision(lab.agent).sentence
    vmid = int(lab.migrate_posts()[0].path.split("/")[4])
    restarted = Lab.attach(lab.sim, Config(seed=3), node="pve1")
    run_past_end(restarted, vmid)
    assert posts_on_stale_statistics(restarted) == [], restarted.sentences
    assert restarted.agent.cooldown_until.get(vmid, 0) > restarted.sim.now, \
        "the guest the previous process moved is in cooldown (from the task list)"


def test_a_lost_post_answer_finds_the_task_even_when_it_already_ended() -> None:
    # A fast link: the 10 GiB move is over (in about 3 s) before the next
    # cycle looks for it.
    lab = make_lab(slow_link(memory_hot(), "8GiB"), Config(seed=3), faults=True)
    assert lab.faults is not None
    # PVE starts the migration but its answer never arrives.
    lab.faults.add(kind="timeout", method="POST", path="/nodes/*/qemu/*/migrate", count=1,
                   executed=True, seconds=30.0)
    result = first_decision(lab.agent)
    assert result.fields.get("result") == "unconfirmed", result
    vmid = int(result.fields["vmid"])  # type: ignore[call-overload]
    lab.run(60)
    assert len([t for t in migration_tasks(lab) if t.id == str(vmid)]) == 1
    assert any(s.startswith(f"migrated vm {vmid}") for _, s in lab.sentences), lab.sentences
    assert not any("did not start" in s for _, s in lab.sentences)
    assert posts_on_stale_statistics(lab) == []


def test_a_lost_task_status_waits_for_fresh_statistics() -> None:
    lab = make_lab(slow_link(memory_hot()), Config(seed=3), faults=True)
    assert lab.faults is not None
    lab.faults.add(kind="http_error", method="GET", path="/nodes/*/tasks/*/status", status=500,
                   message="unable to open task file")
    assert "started task" in first_decision(lab.agent).sentence
    vmid = int(lab.migrate_posts()[0].path.split("/")[4])
    run_past_end(lab, vmid, after=90)
    assert any("lost track" in s for _, s in lab.sentences), "it stopped following"
    assert posts_on_stale_statistics(lab) == [], lab.sentences


def test_an_ha_request_not_yet_carried_out_counts_as_a_migration() -> None:
    scenario = memory_hot()
    for g in scenario["guests"]:
        g["ha"] = True
    scenario["sim"] = {"ha_delay": 40}
    lab = make_lab(scenario, Config(seed=3))
    # Someone asks the HA manager to move vm 101: `hamigrate` ends at once,
    # the real move follows CRM rounds later (a busy CRM: 40 s).
    assert lab.sim.migrate(101, "pve2", online=True).startswith("UPID:")
    result = first_decision(lab.agent)
    assert "HA migration of vm 101 requested" in result.sentence, result.sentence
    run_past_end(lab, 101)
    assert posts_on_stale_statistics(lab) == [], lab.sentences
