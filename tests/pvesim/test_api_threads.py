"""The simulator is driven from a clock thread while HTTP threads call the
API: every answer must be well-formed and state must stay consistent."""

from __future__ import annotations

import threading

from tests.pvesim.simhelp import call, named


def test_concurrent_api_calls_and_clock() -> None:
    sim = named("cpu-hotspot")
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            status, reason, body = call(sim, "GET", "/cluster/resources")
            if status != 200 or not isinstance(body["data"], list):
                errors.append(f"{status} {reason}")
            call(sim, "GET", "/cluster/tasks")

    def mover() -> None:
        for target in ("pve2", "pve3", "pve1") * 3:
            status, reason, _ = call(
                sim,
                "POST",
                "/nodes/" + sim.guests[102].node + "/qemu/102/migrate",
                {"target": target, "online": "1"},
            )
            if status not in (200, 400, 500):
                errors.append(f"{status} {reason}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    m = threading.Thread(target=mover)
    m.start()
    for _ in range(200):
        sim.advance(1.0)
    m.join()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert sim.now == sim.start_time + 200
    sim.advance(60)  # let a migration the mover started last finish
    # every migration the log says succeeded left the guest unlocked where it ended
    g = sim.guests[102]
    assert g.lock is None and sim.migrations == {}
    oks = [r for r in sim.metrics.migrations if r.ok]
    assert oks and oks[-1].target == g.node
