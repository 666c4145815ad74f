"""The cluster-wide configuration (`/etc/pve/balancer.yaml`): one frozen
`Config`, and a loader that never raises.

The loader reports every problem with the file, line and key it concerns so an
operator can fix the file from the journal line alone. Out-of-range values are
clamped into their safe range (a warning, not an error), unknown keys are
warned about with the nearest known key as a hint, and only problems that make
the intent of the file unknowable (broken YAML, a value of the wrong type) are
fatal. A fatal problem yields no `Config`: the caller keeps the last good one
(or stays passive), which is why reloading is just calling the loader again.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """Every tunable of the balancer, with the defaults of POLICY.md.

    Instances built directly (tests, defaults) are taken as given; only the
    loader clamps, because only file input can be out of range by mistake.
    """

    cpu_max: float = 0.8
    memory_max: float = 0.8
    enabled: bool = True
    dry_run: bool = False
    interval: float = 5.0
    safety_margin: float = 0.05
    proactive_factor: float = 1.2
    proactive_margin: float = 0.10
    proactive_band: float = 0.10
    proactive_hold: float = 300.0
    vm_cooldown: float = 900.0
    exclude_tag: str = "pve-balancer-exclude"
    exclude_nodes: frozenset[str] = field(default_factory=frozenset)
    backup_guard: float = 120.0
    seed: int | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-friendly values (`exclude_nodes` as a sorted list), for
        `plan --json`, `status` and structured logs."""
        data = asdict(self)
        data["exclude_nodes"] = sorted(self.exclude_nodes)
        return data


@dataclass(frozen=True)
class ConfigProblem:
    """One finding about a configuration file. `line` is 1-based (None when the
    problem concerns the whole file); `key` is the top-level key concerned."""

    source: str
    line: int | None
    key: str | None
    message: str
    fatal: bool

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.key is None:
            return f"{where}: {self.message}"
        return f"{where}: {self.key}: {self.message}"


@dataclass(frozen=True)
class LoadResult:
    """What loading produced: `config` is None exactly when a problem is fatal."""

    config: Config | None
    problems: tuple[ConfigProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.config is not None

    @property
    def errors(self) -> tuple[ConfigProblem, ...]:
        return tuple(p for p in self.problems if p.fatal)

    @property
    def warnings(self) -> tuple[ConfigProblem, ...]:
        return tuple(p for p in self.problems if not p.fatal)


class _ValueError(Exception):
    """A value of the wrong type; the message says what was expected."""


# --- value readers: raw YAML value -> typed value, or _ValueError -------------


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _read_number(value: object) -> float:
    # bool is an int subclass in Python; `cpu_max: yes` is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _ValueError(f"expected a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _ValueError(f"expected a finite number, got {value}")
    return number


def _read_bool(value: object) -> bool:
    # YAML 1.1 (PyYAML) resolves true/false/yes/no/on/off to booleans; those
    # are accepted. Quoted strings and 0/1 are not: they are ambiguous.
    if not isinstance(value, bool):
        raise _ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _read_string(value: object) -> str:
    if not isinstance(value, str):
        raise _ValueError(f"expected a string, got {_describe(value)}")
    return value.strip()


def _read_node_names(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise _ValueError(
            f"expected a list of node names (e.g. [pve3]), got {_describe(value)}"
        )
    names: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise _ValueError(f"expected node names as strings, got {_describe(item)} in the list")
        names.add(item.strip())
    return frozenset(names)


def _read_seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ValueError(f"expected an integer or null, got {_describe(value)}")
    return value


@dataclass(frozen=True)
class _Key:
    read: Callable[[object], object]
    low: float | None = None
    high: float | None = None


_KEYS: dict[str, _Key] = {
    "cpu_max": _Key(_read_number, 0.5, 0.9),
    "memory_max": _Key(_read_number, 0.5, 0.9),
    "enabled": _Key(_read_bool),
    "dry_run": _Key(_read_bool),
    "interval": _Key(_read_number, 2.0, 60.0),
    "safety_margin": _Key(_read_number, 0.0, 0.2),
    "proactive_factor": _Key(_read_number, 1.05, 2.0),
    "proactive_margin": _Key(_read_number, 0.0, 0.5),
    "proactive_band": _Key(_read_number, 0.0, 0.5),
    "proactive_hold": _Key(_read_number, 0.0, 3600.0),
    "vm_cooldown": _Key(_read_number, 0.0, None),
    "exclude_tag": _Key(_read_string),
    "exclude_nodes": _Key(_read_node_names),
    "backup_guard": _Key(_read_number, 0.0, None),
    "seed": _Key(_read_seed),
}

_NULLABLE = frozenset({"exclude_nodes", "seed"})  # null is a meaningful value for these
_DEFAULTS = Config()

KNOWN_KEYS: tuple[str, ...] = tuple(_KEYS)
"""Every key the file may hold, in documentation order."""

RANGES: dict[str, tuple[float | None, float | None]] = {
    name: (key.low, key.high) for name, key in _KEYS.items() if key.low is not None
}
"""The clamping range of every numeric key (None: unbounded on that side)."""


def _fmt(number: float) -> str:
    return f"{number:g}"


def _clamp(name: str, number: float) -> tuple[float, str | None]:
    key = _KEYS[name]
    if key.low is not None and number < key.low:
        return key.low, f"{_fmt(number)} is below the minimum, clamped to {_fmt(key.low)}"
    if key.high is not None and number > key.high:
        return key.high, f"{_fmt(number)} is above the maximum, clamped to {_fmt(key.high)}"
    return number, None


def _construct(loader: yaml.SafeLoader, node: Node) -> object:
    construct = cast(Callable[..., Any], loader.construct_object)
    return cast(object, construct(node, deep=True))


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _unknown_key_message(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_KEYS, n=1, cutoff=0.6)
    if close:
        return f"unknown key (typo? did you mean {close[0]}?), ignored"
    return f"unknown key, ignored (known keys: {', '.join(KNOWN_KEYS)})"


def parse_config(text: str, source: str = "balancer.yaml") -> LoadResult:
    """Parse the text of a configuration file. Never raises.

    `source` names the file in every problem. Empty text, or a file of only
    comments, means all defaults.
    """
    problems: list[ConfigProblem] = []

    def problem(line: int | None, key: str | None, message: str, fatal: bool) -> None:
        problems.append(ConfigProblem(source, line, key, message, fatal))

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return LoadResult(Config(), ())
        if isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null":
            return LoadResult(Config(), ())
        if not isinstance(root, MappingNode):
            problem(
                _line(root), None,
                "the file must be a mapping of keys to values (key: value lines)", True,
            )
            return LoadResult(None, tuple(problems))

        values: dict[str, object] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in root.value:
            line = _line(key_node)
            raw_key = _construct(loader, key_node)
            name = str(raw_key)
            if not isinstance(raw_key, str) or name not in _KEYS:
                problem(line, name, _unknown_key_message(name), False)
                continue
            if name in seen:
                problem(
                    line, name,
                    f"given again (first on line {seen[name]}); the last value is used",
                    False,
                )
            seen[name] = line
            raw = _construct(loader, value_node)
            if raw is None and name not in _NULLABLE:
                # `key:` with nothing after it reads as "not set", not as a mistake
                shown = _show(getattr(_DEFAULTS, name))
                problem(_line(value_node), name, f"no value given, the default {shown} is used",
                        False)
                values.pop(name, None)
                continue
            try:
                value = _KEYS[name].read(raw)
            except _ValueError as exc:
                problem(_line(value_node), name, str(exc), True)
                continue
            if isinstance(value, float):
                value, note = _clamp(name, value)
                if note is not None:
                    problem(_line(value_node), name, note, False)
            values[name] = value
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = None if mark is None else int(mark.line) + 1
        context = exc.context
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            context = f"{context} started on line {int(exc.context_mark.line) + 1}"
        what = ", ".join(part for part in (context, exc.problem) if part) or "unreadable"
        problem(where, None, f"invalid YAML: {what}", True)
        return LoadResult(None, tuple(problems))
    except yaml.YAMLError as exc:
        problem(None, None, f"invalid YAML: {exc}", True)
        return LoadResult(None, tuple(problems))
    finally:
        cast(Callable[[], None], loader.dispose)()

    if any(p.fatal for p in problems):
        return LoadResult(None, tuple(problems))
    return LoadResult(Config(**values), tuple(problems))  # type: ignore[arg-type]


def load_config(path: Path) -> LoadResult:
    """Load `path`. A missing file means all defaults with no problem (a fresh
    cluster needs no file); an unreadable one is fatal."""
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LoadResult(Config(), ())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        problem = ConfigProblem(source, None, None, f"cannot read: {reason}", True)
        return LoadResult(None, (problem,))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return LoadResult(
            None, (ConfigProblem(source, line, None, "not valid UTF-8 text", True),)
        )
    return parse_config(text, source)


class ConfigSource:
    """The configuration file, re-read when its stat signature changes.

    `config` is the configuration in force: the last one that loaded
    without fatal problems, or None if none ever did (the agent is then
    passive). Each problem is logged once per change of the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: Config | None = None
        self._signature: tuple[int, int, int] | None | str = "unread"

    @classmethod
    def fixed(cls, config: Config) -> ConfigSource:
        """A source that never reads a file (tests, `plan --config` checks)."""
        src = cls(Path(os.devnull))
        src.config = config
        src._signature = "fixed"
        return src

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, force: bool = False) -> bool:
        """Re-read if the file changed (or `force`). Returns True when the
        configuration in force changed."""
        if self._signature == "fixed":
            return False
        signature = self._stat()
        if not force and signature == self._signature:
            return False
        self._signature = signature
        result = load_config(self.path)
        for problem in result.problems:
            (log.error if problem.fatal else log.warning)("%s", problem)
        if result.config is None:
            if self.config is None:
                log.error("configuration %s rejected; staying passive until it is fixed",
                          self.path)
            else:
                log.error("configuration %s rejected; keeping the previous configuration",
                          self.path)
            return False
        if result.config == self.config:
            return False
        first = self.config is None
        self.config = result.config
        log.info("configuration %s %s: %s", self.path, "loaded" if first else "reloaded",
                 _config_summary(result.config))
        return True


def _config_summary(config: Config) -> str:
    flags = []
    if not config.enabled:
        flags.append("disabled (observe only)")
    if config.dry_run:
        flags.append("dry run")
    head = f"cpu_max {config.cpu_max:.2f}, memory_max {config.memory_max:.2f}, " \
           f"interval {config.interval:g} s"
    return ", ".join([head, *flags])
