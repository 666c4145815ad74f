"""The migration-following state machine (executor.step), without an API."""

from __future__ import annotations

from pve_balancer.executor import HA_START_TIMEOUT, MAX_STATUS_ERRORS, InFlight, step
from pve_balancer.model import Guest, Mode, Node, Snapshot
from pve_balancer.pve import Task

UPID = "UPID:pve1:00001234:00ABCDEF:6745A0F0:qmigrate:101:pve-balancer@pve!agent:"
HA_UPID = "UPID:pve1:00001235:00ABCDEF:6745A0F0:hamigrate:101:pve-balancer@pve!agent:"
REAL = "UPID:pve1:00001236:00ABCDEF:6745A0F8:qmigrate:101:root@pam:"
API_T0 = float(0x6745A0F0)  # the API's clock at the POST (from the UPIDs)


def flight(ha: bool = False) -> InFlight:
    return InFlight(vmid=101, name="web1", source="pve1", target="pve2", mode=Mode.CPU,
                    upid=HA_UPID if ha else UPID, ha=ha, started=1000.0)


def snapshot(node: str = "pve1", lock: str | None = None) -> Snapshot:
    nodes = tuple(Node(n, True, 0.5, 16, 1, 2) for n in ("pve1", "pve2"))
    guest = Guest(101, "web1", node, "qemu", "running", 0.5, 4, 1, 2, lock=lock)
    return Snapshot(time=0.0, nodes=nodes, guests=(guest,))


def task(upid: str, running: bool, status: str | None = None, start: float = API_T0) -> Task:
    kind = upid.split(":")[5]
    return Task(upid=upid, node="pve1", kind=kind, vmid="101", running=running,
                exitstatus=status, starttime=start)


def test_plain_migration_running_then_ok() -> None:
    f = flight()
    assert f.watch_upid == UPID
    p = step(f, task(UPID, True), None, snapshot(lock="migrate"), (), 1010.0)
    assert not p.done and "running for 10 s" in p.sentence
    p = step(f, task(UPID, False, "OK"), None, snapshot("pve2"), (), 1042.0)
    assert p.done and p.ok and p.sentence == "migrated vm 101 (web1) pve1 → pve2 in 42 s (OK)"


def test_plain_migration_failure_reports_exit_status() -> None:
    p = step(flight(), task(UPID, False, "migration aborted"), None, snapshot(), (), 1005.0)
    assert p.done and not p.ok and p.exitstatus == "migration aborted"
    assert "failed after 5 s: migration aborted" in p.sentence


def test_status_errors_are_tolerated_then_given_up() -> None:
    f = flight()
    for i in range(MAX_STATUS_ERRORS - 1):
        p = step(f, None, "timed out", snapshot(), (), 1000.0 + i)
        assert not p.done
    p = step(f, None, "timed out", snapshot(), (), 1100.0)
    assert p.done and not p.ok and "lost track" in p.sentence


def test_a_successful_read_resets_the_error_count() -> None:
    f = flight()
    for _ in range(MAX_STATUS_ERRORS - 1):
        step(f, None, "timed out", snapshot(), (), 1001.0)
    step(f, task(UPID, True), None, snapshot(), (), 1002.0)
    assert f.status_errors == 0


def test_ha_request_ending_at_once_is_not_the_end_of_the_move() -> None:
    f = flight(ha=True)
    p = step(f, task(HA_UPID, False, "OK"), None, snapshot(), (), 1001.0)
    assert not p.done and f.handed_over and f.watch_upid is None
    assert "waiting for the HA manager" in p.sentence
    # the real qmigrate shows up in /cluster/tasks
    p = step(f, None, None, snapshot(lock="migrate"), (task(REAL, True, start=API_T0 + 6),), 1010.0)
    assert not p.done and f.real_upid == REAL and f.watch_upid == REAL
    p = step(f, task(REAL, False, "OK", API_T0 + 6), None, snapshot("pve2"), (), 1040.0)
    assert p.done and p.ok and "via HA" in p.sentence


def test_ha_move_seen_only_by_the_guest_location() -> None:
    f = flight(ha=True)
    step(f, task(HA_UPID, False, "OK"), None, snapshot(), (), 1001.0)
    p = step(f, None, None, snapshot("pve2"), (), 1030.0)
    assert p.done and p.ok


def test_ha_real_task_failed_between_cycles() -> None:
    f = flight(ha=True)
    step(f, task(HA_UPID, False, "OK"), None, snapshot(), (), 1001.0)
    done = task(REAL, False, "migration problems", start=API_T0 + 6)
    p = step(f, None, None, snapshot(), (done,), 1030.0)
    assert p.done and not p.ok and "migration problems" in p.sentence


def test_ha_request_never_acted_on_times_out() -> None:
    f = flight(ha=True)
    step(f, task(HA_UPID, False, "OK"), None, snapshot(), (), 1001.0)
    p = step(f, None, None, snapshot(), (), 1000.0 + HA_START_TIMEOUT - 1)
    assert not p.done
    p = step(f, None, None, snapshot(), (), 1000.0 + HA_START_TIMEOUT + 1)
    assert p.done and not p.ok and p.exitstatus == "timeout"


def test_old_migration_tasks_of_the_same_guest_are_ignored() -> None:
    f = flight(ha=True)
    step(f, task(HA_UPID, False, "OK"), None, snapshot(), (), 1001.0)
    old = task(REAL, False, "migration aborted", start=API_T0 - 500)
    p = step(f, None, None, snapshot(), (old,), 1010.0)
    assert not p.done


def test_failed_ha_request() -> None:
    p = step(flight(ha=True), task(HA_UPID, False, "service 'vm:101' not in started state"),
             None, snapshot(), (), 1001.0)
    assert p.done and not p.ok and "HA migration request" in p.sentence


def test_unconfirmed_post_follows_only_a_running_task() -> None:
    f = InFlight(vmid=101, name="web1", source="pve1", target="pve2", mode=Mode.CPU,
                 upid="", ha=False, started=1000.0, handed_over=True, unconfirmed=True)
    old = task(REAL, False, "migration aborted", start=API_T0 - 500)
    p = step(f, None, None, snapshot(), (old,), 1005.0)
    assert not p.done and "answer was lost" in p.sentence
    p = step(f, None, None, snapshot(lock="migrate"), (task(REAL, True),), 1010.0)
    assert not p.done and f.real_upid == REAL
    p = step(f, task(REAL, False, "OK"), None, snapshot("pve2"), (), 1030.0)
    assert p.done and p.ok


def test_unconfirmed_post_that_never_started() -> None:
    f = InFlight(vmid=101, name="web1", source="pve1", target="pve2", mode=Mode.CPU,
                 upid="", ha=False, started=1000.0, handed_over=True, unconfirmed=True)
    p = step(f, None, None, snapshot(), (), 1040.0)
    assert p.done and not p.ok and "did not start" in p.sentence
