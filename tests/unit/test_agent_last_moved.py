"""The agent tells the policy when it last asked PVE to migrate each guest
(`PolicyState.last_moved`), so proactive mode can rest those guests for
`PROACTIVE_REST` seconds; the record outlives the shorter `vm_cooldown`."""

from __future__ import annotations

from pve_balancer.config import Config
from pve_balancer.policy import PROACTIVE_REST
from pve_balancer.pve import PveError

from .test_agent_cycle import FakeClient, agent, posts


def test_a_started_migration_is_remembered_for_the_proactive_rest() -> None:
    client = FakeClient()
    a = agent(client, config=Config(seed=3, vm_cooldown=60))
    posted_at = a.env.now()
    assert "started task" in a.run_cycle().sentence
    vmid = int(posts(client)[0].split()[1])
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
    client = FakeClient()

    def refuse(node: str, vmid: int, target: str) -> str:
        client.calls.append(f"POST {vmid} {target}")
        raise PveError("HTTP 500 busy", status=500)

    client.migrate = refuse  # type: ignore[method-assign]
    a = agent(client)
    posted_at = a.env.now()
    assert "could not start" in a.run_cycle().sentence
    vmid = int(posts(client)[0].split()[1])
    assert a._policy_state(posted_at + 1).last_moved == {vmid: posted_at}


def test_no_post_no_record() -> None:
    client = FakeClient()
    a = agent(client, config=Config(seed=3, dry_run=True))
    assert "dry run, not started" in a.run_cycle().sentence
    assert posts(client) == [] and a.last_moved == {}
