"""The configuration in force across the life of the file: a file that
disappears, cannot be read or turns invalid never changes what the agent
does, and every such episode is one journal line when it starts and one
when it ends.

The end-to-end cases run the real agent against a simulated cluster and
take the simulator's request log as the witness of what was POSTed."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from pve_balancer.config import Config, ConfigSource
from simlab.inprocess import InProcessLab as Lab
from simlab.inprocess import make_lab
from tests.conftest import guest_spec, nodes_spec

LOGGER = "pve_balancer.config"


def write(path: Path, text: str, mtime: int) -> None:
    """Write with a given mtime: a rewrite within one mtime tick would
    otherwise look unchanged."""
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and (level is None or r.levelno == level)]


def test_deleted_file_keeps_the_last_good_configuration(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "dry_run: true\nenabled: false\n", 1000)
    source = ConfigSource(path)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert source.refresh()
        caplog.clear()
        path.unlink()
        for _ in range(5):
            assert not source.refresh()
        assert source.config == Config(dry_run=True, enabled=False)
        assert messages(caplog) == [
            f"configuration {path} is gone; keeping the last good configuration until it is "
            "back: cpu_max 0.80, memory_max 0.80, interval 5 s, disabled (observe only), "
            "dry run (an empty file means the defaults)"]
        assert caplog.records[0].levelno == logging.WARNING
        caplog.clear()
        write(path, "dry_run: true\nenabled: false\n", 2000)
        assert not source.refresh(), "the same configuration is back: nothing changed"
        assert messages(caplog, logging.INFO) == [
            f"configuration {path} is back, unchanged: cpu_max 0.80, memory_max 0.80, "
            "interval 5 s, disabled (observe only), dry run"]
        caplog.clear()
        write(path, "dry_run: true\n", 3000)
        assert source.refresh() and source.config == Config(dry_run=True)
        assert messages(caplog) == [f"configuration {path} reloaded: cpu_max 0.80, "
                                    "memory_max 0.80, interval 5 s, dry run"]


def test_a_sighup_while_the_file_is_gone_says_so_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "cpu_max: 0.7\n", 1000)
    source = ConfigSource(path)
    source.refresh()
    path.unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        caplog.clear()
        source.refresh()
        source.refresh()
        source.refresh(force=True)  # the operator asked: answer
    assert len(messages(caplog)) == 2 and source.config == Config(cpu_max=0.7)


def test_unreadable_file_keeps_the_last_good_configuration(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "enabled: false\n", 1000)
    source = ConfigSource(path)
    source.refresh()
    path.unlink()
    path.mkdir()  # what a read cannot make sense of, even as root
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        caplog.clear()
        for _ in range(3):
            assert not source.refresh()
    assert source.config == Config(enabled=False)
    assert messages(caplog) == [
        f"cannot read configuration {path} (a directory, not a file); keeping the last good "
        "configuration: cpu_max 0.80, memory_max 0.80, interval 5 s, disabled (observe only)"]
    assert caplog.records[0].levelno == logging.WARNING
    caplog.clear()
    path.rmdir()
    write(path, "enabled: false\n", 2000)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        caplog.clear()
        source.refresh()
    assert messages(caplog) == [f"configuration {path} is back, unchanged: cpu_max 0.80, "
                                "memory_max 0.80, interval 5 s, disabled (observe only)"]


def test_no_file_at_start_means_the_defaults_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    source = ConfigSource(path)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert source.refresh(force=True)
        assert not source.refresh()
    assert source.config == Config()
    assert messages(caplog) == [
        f"no configuration file {path}; using the defaults: cpu_max 0.80, memory_max 0.80, "
        "interval 5 s (`pve-balancer setup` installs a commented one)"]
    assert caplog.records[0].levelno == logging.WARNING
    caplog.clear()
    write(path, "dry_run: true\n", 1000)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        caplog.clear()
        assert source.refresh()
    assert messages(caplog) == [f"configuration {path} loaded: cpu_max 0.80, memory_max 0.80, "
                                "interval 5 s, dry run"]


@pytest.mark.parametrize("text", ["enabled: maybe\n", "cpu_max: 80\n",
                                  "exclude_nodes: " + "[" * 1000 + "\n"])
def test_invalid_file_at_start_is_passive_until_a_valid_one_exists(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, text, 1000)
    source = ConfigSource(path)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert not source.refresh(force=True)
        assert source.config is None
        assert messages(caplog)[-1] == (
            f"configuration {path} rejected; staying passive until it is fixed")
        caplog.clear()
        path.unlink()  # deleting a broken file is no way to get the defaults
        assert not source.refresh()
        assert source.config is None
        assert messages(caplog) == [
            f"configuration {path} is gone; staying passive until a valid file exists "
            "(an empty file means the defaults)"]
        write(path, "", 2000)
        assert source.refresh() and source.config == Config()


def test_unreadable_file_at_start_is_passive(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    os.mkfifo(path)
    source = ConfigSource(path)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        caplog.clear()
        assert not source.refresh(force=True)
    assert source.config is None
    assert messages(caplog, logging.ERROR) == [
        f"cannot read configuration {path} (not a regular file); staying passive until it "
        "can be read"]


def test_a_broken_reload_keeps_the_last_good_and_its_fix_is_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, "cpu_max: 0.7\n", 1000)
    source = ConfigSource(path)
    source.refresh()
    write(path, "cpu_max: 70\n", 2000)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        caplog.clear()
        assert not source.refresh()
        assert source.config == Config(cpu_max=0.7)
        assert messages(caplog, logging.ERROR) == [
            f"{path}:1: cpu_max: 70 looks like a percentage; did you mean 0.70?",
            f"configuration {path} rejected; keeping the previous configuration"]
        caplog.clear()
        write(path, "cpu_max: 0.7\n", 3000)
        assert not source.refresh()
        assert messages(caplog) == [
            f"configuration {path} accepted again, unchanged: cpu_max 0.70, memory_max 0.80, "
            "interval 5 s"]


# ------------------------------------------------------------ end to end


def memory_hotspot() -> dict[str, object]:
    """pve1 at ~81 % memory, pve2 and pve3 at ~63 %: the defaults move a
    guest off pve1 in the first cycle."""
    guests = [guest_spec(100 + i, "pve1", cpu=0.1) for i in range(1, 13)]
    guests += [guest_spec(200 + i, "pve2", cpu=0.1) for i in range(1, 10)]
    guests += [guest_spec(300 + i, "pve3", cpu=0.1) for i in range(1, 10)]
    return {"name": "memory-hotspot", "nodes": nodes_spec(3), "guests": guests}


def lab_on_file(path: Path) -> Lab:
    lab = make_lab(memory_hotspot())
    lab.agent.config_source = ConfigSource(path)
    return lab


@pytest.mark.parametrize("protective", ["dry_run: true\n", "enabled: false\n"])
@pytest.mark.parametrize("how", ["deleted", "unreadable", "broken"])
def test_losing_the_file_never_starts_a_migration(tmp_path: Path, protective: str,
                                                  how: str) -> None:
    path = tmp_path / "balancer.yaml"
    write(path, f"seed: 1\n{protective}", 1000)
    lab = lab_on_file(path)
    assert lab.mem_fraction("pve1") > 0.8
    lab.run(60)
    assert lab.migrate_posts() == []
    if how == "deleted":
        path.unlink()
    elif how == "unreadable":
        path.unlink()
        path.mkdir()
    else:
        write(path, "seed: 1\n" + "x: [" * 500 + "\n", 2000)
    lab.run(120)
    assert lab.migrate_posts() == [], f"{how} file dropped {protective.strip()}"
    # the witness can fail: the same cluster with the defaults migrates
    if how == "unreadable":
        path.rmdir()
    elif how == "broken":
        path.unlink()
    write(path, "seed: 1\n", 3000)
    lab.run(60)
    assert len(lab.migrate_posts()) == 1


def test_deleting_the_file_before_the_agent_starts_uses_the_defaults(tmp_path: Path) -> None:
    """The documented rule (a fresh cluster needs no file), shown here so a
    change of that rule is a decision, not an accident."""
    lab = lab_on_file(tmp_path / "balancer.yaml")
    lab.run(60)
    assert len(lab.migrate_posts()) == 1


def test_copying_the_example_in_place_loads_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "balancer.yaml.example", path)
    source = ConfigSource(path)
    assert source.refresh() and source.config == Config()
