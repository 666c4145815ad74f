"""Golden journals: each named scenario's run written as the journal an
operator reads, and compared with `tests/scenarios/<name>/journal.expect`.

The run: the scenario's simulator with seed 0 and no warm-up (the agent's
first cycle is at t = 0, so the scenario's `at:` times line up with the
journal's), the real agent on the first node through `simlab.inprocess`,
configured by the scenario's `balancer_config:` if it has one, else by the
defaults; the agent's seed is 1 unless `balancer_config` sets one. All of it
runs in virtual time, so the journal is the same on every machine.

The journal: one line per cycle whose sentence is worded differently from
the previous cycle's, `TIME SENTENCE`, TIME being the virtual seconds since
the scenario start (`%7.1f`). "Worded differently" ignores the numbers that
stand alone (vmids, fractions, seconds; not the digits of a name such as
pve1 or of a UPID), as the daemon does when it decides what to repeat in the
journal (`pve_balancer.daemon`): the line shows the first cycle of a stretch
with all its numbers, and the next line's time says when the stretch ended.
Comparing exact sentences would print every cycle of a stretch in which only
a number moves (a countdown, or the blocked candidate a "no action" reason
names, which in memory mode follows the policy's seeded shuffle and changes
from cycle to cycle); a change of policy would then show as hundreds of
changed lines instead of the few that say what changed.

`normalise()` is the one place where a sentence is altered before it is
written. It only keeps each sentence on one line: nothing in today's
sentences depends on the wall clock or the process (UPIDs carry virtual time
and a pid from the simulator's seeded generator; durations are measured on
the virtual clock).

After an intended change of behaviour, rewrite the expected journals and
review the change in the diff:

    .venv/bin/python -m tests.scenarios.golden --update [NAME ...]
    git diff tests/scenarios

Without `--update` the command compares and prints each difference (exit
status 1 if any), as `tests/scenarios/test_named_scenarios.py` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import re
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import yaml

from pve_balancer.config import Config, parse_config
from simlab.inprocess import InProcessLab, make_lab, scenario_of
from tests.scenarios import journal_path, names, scenario_path

REPO = Path(__file__).resolve().parents[2]

SIM_SEED = 0
AGENT_SEED = 1
UPDATE_COMMAND = ".venv/bin/python -m tests.scenarios.golden --update"
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def config_of(name: str) -> Config:
    """The scenario's `balancer_config:` read as balancer.yaml would be, with
    the agent's seed pinned to AGENT_SEED unless it names one."""
    path = scenario_path(name)
    mapping = (yaml.safe_load(path.read_text()) or {}).get("balancer_config")
    if mapping is None:
        return Config(seed=AGENT_SEED)
    loaded = parse_config(yaml.safe_dump(mapping), source=f"{path}: balancer_config")
    if loaded.config is None or loaded.problems:
        raise ValueError("; ".join(str(p) for p in loaded.problems))
    if loaded.config.seed is None:
        return dataclasses.replace(loaded.config, seed=AGENT_SEED)
    return loaded.config


@cache
def run(name: str) -> InProcessLab:
    """The named scenario run for its whole duration (once per process:
    the tests read the same run for the journal, the invariants and the
    outcome)."""
    scenario = scenario_of(scenario_path(name))
    lab = make_lab(scenario, config_of(name), seed=SIM_SEED, warmup=0)
    lab.run(scenario.duration)
    return lab


def normalise(sentence: str) -> str:
    """A sentence as the journal writes it (see the module docstring)."""
    return sentence.replace("\r", "\\r").replace("\n", "\\n")


def wording(sentence: str) -> str:
    """A sentence with its stand-alone numbers blanked out."""
    return _NUMBER.sub("#", sentence)


def journal(lab: InProcessLab) -> str:
    """The run's journal: the first cycle of each differently worded
    stretch, with its time."""
    lines: list[str] = []
    previous: str | None = None
    for t, sentence in lab.sentences:
        text = normalise(sentence)
        if wording(text) != previous:
            lines.append(f"{t - lab.sim.start_time:7.1f} {text}\n")
        previous = wording(text)
    return "".join(lines)


def expected(name: str) -> str:
    path = journal_path(name)
    return path.read_text() if path.exists() else ""


def diff(name: str, actual: str) -> str:
    """The unified diff from the expected journal to `actual` ("" if equal)."""
    where = journal_path(name).relative_to(REPO)
    return "".join(difflib.unified_diff(
        expected(name).splitlines(keepends=True), actual.splitlines(keepends=True),
        fromfile=f"{where} (expected)", tofile=f"{where} (this run)"))


def mismatch(name: str, actual: str) -> str | None:
    """None if `actual` is the expected journal, else what changed (- expected,
    + this run) and the command that accepts the change."""
    if actual == expected(name):
        return None
    return (f"the journal of scenario {name} changed; if that is intended, run\n"
            f"    {UPDATE_COMMAND} {name}\nand review the diff.\n{diff(name, actual)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.scenarios.golden",
        description="Compare (or with --update rewrite) the golden journals "
                    "of the named scenarios in tests/scenarios/.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="scenarios to run (default: all)")
    parser.add_argument("--update", action="store_true",
                        help="write each run's journal to its journal.expect")
    args = parser.parse_args(argv)
    known = names()
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    # The agent logs every cycle; here only the journal counts.
    logging.getLogger("pve_balancer").setLevel(logging.WARNING)
    differ = 0
    for name in args.names or known:
        actual = journal(run(name))
        problem = mismatch(name, actual)
        if problem is None:
            print(f"{name}: unchanged")
        elif args.update:
            change = diff(name, actual)
            journal_path(name).write_text(actual)
            print(f"{name}: rewrote {journal_path(name).relative_to(REPO)}\n{change}")
        else:
            differ += 1
            print(problem)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
