"""The fence right before a migrate POST (`pve_balancer.fence`), in the
simulator's virtual time: what reaches PVE is read from its request log.

The elections here are second implementations of `leadership.Election`
(as in test_agent_cycle.py): a leader whose confirmation stalls, the way a
process stopped (SIGSTOP, a frozen VM) inside the renew would. The process
case with the real lock is tests/integration/test_fencing_processes.py.
"""

from __future__ import annotations

from typing import Any

from pve_balancer.config import Config
from pve_balancer.leadership import AlwaysLeader
from pvesim.clock import VirtualClock
from simlab.inprocess import InProcessLab, simulator
from tests.conftest import guest_spec, nodes_spec
from tests.term_start import first_decision


def memory_hot() -> dict[str, Any]:
    guests = [guest_spec(v, "pve1", cpu=0.1, cores=2, mem="10GiB", memory="10GiB")
              for v in range(101, 106)]
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "memory-hot", "nodes": nodes_spec(2), "guests": guests}


class StallsInConfirm(AlwaysLeader):
    """Leads; its confirmation renews at the time it was given, then the
    process stalls for `stall` seconds before it returns."""

    def __init__(self, clock: VirtualClock, stall: float) -> None:
        super().__init__()
        self.clock, self.stall = clock, stall
        self.last_renew: float | None = None

    def confirm(self, now: float) -> bool:
        self.last_renew = now
        self.clock.sleep(self.stall)
        return super().confirm(now)


def run(stall: float) -> tuple[InProcessLab, str]:
    sim = simulator(memory_hot())
    lab = InProcessLab.attach(sim, Config(seed=3), election=StallsInConfirm(VirtualClock(sim),
                                                                             stall))
    return lab, first_decision(lab.agent).sentence


def test_a_stall_after_the_renew_keeps_the_post_from_being_sent() -> None:
    lab, sentence = run(stall=12.0)
    assert lab.migrate_posts() == [], sentence
    assert "not migrating vm" in sentence and "the process stalled" in sentence, sentence


def test_a_prompt_confirmation_lets_the_post_through() -> None:
    lab, sentence = run(stall=0.01)
    assert len(lab.migrate_posts()) == 1 and "started task" in sentence, sentence
