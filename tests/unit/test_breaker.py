"""The circuit breaker: after repeated failed migrations, none is started
until an operator acts or the window passes.

The cluster is pvesim's, in virtual time, with every live migration
failing midway (`sim.migration_failure_rate: 1`, as when the migration
network or the target's storage is broken). The verdicts are the
simulator's request log (migrate POSTs that reached PVE) and the journal
lines the daemon wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pve_balancer.config import Config, ConfigSource, parse_config
from pve_balancer.episodes import HEARTBEAT
from simlab.inprocess import InProcessLab, simulator
from tests.conftest import guest_spec, nodes_spec


def every_migration_fails() -> dict[str, Any]:
    """pve1 at ~85 % memory with five movable 10 GiB VMs; every migration
    PVE starts fails."""
    # names that differ in letters, not only digits: while the breaker is
    # open the chosen guest may alternate, and the journal must not tell
    # each alternation as a new sentence
    names = ("web", "db", "cache", "queue", "mail")
    guests = [guest_spec(v, "pve1", cpu=0.1, cores=2, mem="10GiB", memory="10GiB", name=name)
              for v, name in zip(range(101, 106), names, strict=True)]
    guests.append(guest_spec(201, "pve2", cpu=0.1, cores=2))
    return {"name": "failing-migrations", "nodes": nodes_spec(2), "guests": guests,
            "sim": {"migration_failure_rate": 1.0}}


def lab(config: Config) -> InProcessLab:
    return InProcessLab.attach(simulator(every_migration_fails()), config)


def breaker_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.INFO and "circuit breaker" in r.getMessage()]


def test_three_failed_migrations_open_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pve_balancer")
    cluster = lab(Config(seed=3))
    cluster.run(600)
    posts = cluster.migrate_posts()
    assert len(posts) == 3, [(p.time - cluster.started_at, p.path) for p in posts]
    opened = [line for line in breaker_lines(caplog) if "circuit breaker open:" in line]
    assert len(opened) == 1, breaker_lines(caplog)
    assert "3 migrations failed within 30 min" in opened[0]
    assert "systemctl reload pve-balancer" in opened[0], "it says how to act"
    caplog.clear()
    waiting = [s for s in cluster.run(600) if "circuit breaker open" in s]
    assert waiting and all("not started" in s for s in waiting), waiting
    told = [r.getMessage() for r in caplog.records
            if r.levelno >= logging.INFO and "circuit breaker open" in r.getMessage()]
    # told once, then again only as the journal's heartbeat (not each cycle)
    assert len(told) <= 1 + 600 // HEARTBEAT, f"an open breaker is told each cycle: {told}"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                and "circuit breaker" in r.getMessage()]
    assert warnings == [], [r.getMessage() for r in warnings]


def test_sighup_resets_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pve_balancer")
    cluster = lab(Config(seed=3))
    cluster.run(600)
    assert len(cluster.migrate_posts()) == 3
    cluster.daemon.request_reload()
    cluster.run(120)
    assert len(cluster.migrate_posts()) > 3, "the operator's reload lets it try again"
    assert any("circuit breaker reset (SIGHUP)" in line for line in breaker_lines(caplog))


def test_the_breaker_closes_when_its_window_has_passed(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pve_balancer")
    cluster = lab(Config(seed=3, breaker_failures=2, breaker_window=300.0))
    cluster.run(300)
    assert len(cluster.migrate_posts()) == 2
    cluster.run(400)
    assert len(cluster.migrate_posts()) >= 3, "tried again once the window passed"
    assert any("circuit breaker closed after 5 min" in line for line in breaker_lines(caplog))


def test_zero_turns_the_breaker_off() -> None:
    cluster = lab(Config(seed=3, breaker_failures=0))
    cluster.run(600)
    assert len(cluster.migrate_posts()) == 5, "each guest once (cooldown), no breaker"


def test_breaker_keys_are_clamped_and_counted_in_whole_numbers() -> None:
    result = parse_config("breaker_failures: 500\nbreaker_window: 10\n")
    assert result.config is not None
    assert (result.config.breaker_failures, result.config.breaker_window) == (100, 60.0)
    assert [p.key for p in result.warnings] == ["breaker_failures", "breaker_window"]
    halves = parse_config("breaker_failures: 2.5\n")
    assert halves.config is not None and halves.config.breaker_failures == 2
    assert isinstance(halves.config.breaker_failures, int)
    assert "not a whole number" in str(halves.warnings[0])
    off = parse_config("breaker_failures: 0\n")
    assert off.config is not None and off.config.breaker_failures == 0


def test_a_change_of_balancer_yaml_resets_the_breaker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pve_balancer")
    path = tmp_path / "balancer.yaml"
    path.write_text("seed: 3\n", encoding="utf-8")
    cluster = lab(Config(seed=3))
    cluster.agent.config_source = ConfigSource(path)
    cluster.run(600)
    assert len(cluster.migrate_posts()) == 3
    path.write_text("seed: 3\nvm_cooldown: 600\n", encoding="utf-8")
    cluster.run(120)
    assert len(cluster.migrate_posts()) > 3, "the operator's change lets it try again"
    assert any("circuit breaker reset (balancer.yaml changed)" in line
               for line in breaker_lines(caplog))
