"""The agent tells the policy when it last asked PVE to migrate each guest
(`PolicyState.last_moved`), so proactive mode can rest those guests for
`PROACTIVE_REST` seconds; the record outlives the shorter `vm_cooldown`.

The situations are those of `test_agent_cycle` (a simulated cluster, the
real client); what the agent asked is read from the simulator's request log.
"""

from __future__ import annotations

from pve_balancer.config import Config
from pve_balancer.policy import PROACTIVE_REST, RETURN_MEMORY
from simlab.inprocess import InProcessLab as Lab
from simlab.inprocess import make_lab
from tests.term_start import first_decision

from .test_agent_cycle import lab_with, memory_hot, refuse_migrations, vmid_of


def test_a_started_migration_is_remembered_for_the_proactive_rest() -> None:
    lab = lab_with(memory_hot(), config=Config(seed=3, vm_cooldown=60))
    a = lab.agent
    assert "started task" in first_decision(a).sentence
    [post] = lab.migrate_posts()
    posted_at = post.time
    assert post.status == 200
    vmid = vmid_of(post)
    assert a._policy_state(posted_at).last_moved == {vmid: posted_at}
    # past the cooldown, still within the rest
    later = posted_at + PROACTIVE_REST - 1
    state = a._policy_state(later)
    assert vmid not in state.cooldown_until
    assert state.last_moved == {vmid: posted_at}
    # pruned once the rest is over
    assert a._policy_state(posted_at + PROACTIVE_REST).last_moved == {}
    assert a.last_moved == {}


def test_a_refused_migration_counts_as_tried() -> None:
    lab = lab_with(memory_hot())
    refused = refuse_migrations(lab, range(101, 106))
    a = lab.agent
    result = first_decision(a)
    posted_at = a.env.now()
    assert "could not start" in result.sentence
    [vmid] = [v for v, rule in refused.items() if rule.fired]
    assert a._policy_state(posted_at + 1).last_moved == {vmid: posted_at}


def test_no_post_no_record() -> None:
    lab = lab_with(memory_hot(), config=Config(seed=3, dry_run=True))
    a = lab.agent
    assert "dry run, not started" in first_decision(a).sentence
    assert lab.requests("POST") == [] and a.last_moved == {}


def test_every_node_a_guest_left_is_remembered_for_the_return_memory() -> None:
    """`came_from` keeps each node the balancer moved a guest off, not only
    the last, for `RETURN_MEMORY`; a later move off another node adds to it."""
    lab = lab_with(memory_hot(), config=Config(seed=3, vm_cooldown=60))
    a = lab.agent
    assert "started task" in first_decision(a).sentence
    [post] = lab.migrate_posts()
    posted_at, vmid = post.time, vmid_of(post)
    source = post.path.split("/")[2]
    assert a._policy_state(posted_at).came_from == {vmid: {source: posted_at}}
    a.came_from[vmid]["pve9"] = posted_at + 3600  # a later move off another node
    state = a._policy_state(posted_at + RETURN_MEMORY - 1)
    assert state.came_from == {vmid: {source: posted_at, "pve9": posted_at + 3600}}
    # each node is forgotten on its own once the memory is over
    state = a._policy_state(posted_at + RETURN_MEMORY)
    assert state.came_from == {vmid: {"pve9": posted_at + 3600}}
    assert a._policy_state(posted_at + 3600 + RETURN_MEMORY).came_from == {}
    assert a.came_from == {}


def test_a_new_term_learns_from_the_task_list_which_node_a_guest_left() -> None:
    """A migration nobody in this process made (an operator's, or the
    previous leader's) puts its source in `came_from`, from the task list,
    before the new term's first decision: the return block survives a
    failover and respects an operator's evacuation."""
    lab = make_lab(memory_hot(), Config(seed=3))
    source = lab.sim.guest(101).node
    target = next(n for n in ("pve2", "pve3") if n != source)
    assert lab.sim.migrate(101, target, online=True).startswith("UPID:")
    assert lab.run_until(lambda: lab.sim.running_migration(101) is None, limit=900)
    [task] = [t for t in lab.sim.tasks if t.type == "qmigrate" and t.id == "101"]
    successor = Lab.attach(lab.sim, Config(seed=3), node=target)
    first_decision(successor.agent)
    left = successor.agent._policy_state(successor.sim.now).came_from.get(101, {})
    assert left.get(source) == task.starttime, left
    assert target not in left
