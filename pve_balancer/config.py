"""The cluster-wide configuration (`/etc/pve/balancer.yaml`): one frozen
`Config`, and a loader that never raises.

The loader reports every problem with the file, line and key it concerns so an
operator can fix the file from the journal line alone. Out-of-range values are
clamped into their safe range (a warning, not an error), unknown keys are
warned about with the nearest known key as a hint, and only problems that make
the intent of the file unknowable (broken YAML, a value of the wrong type) are
fatal. A fatal problem yields no `Config`: the caller keeps the last good one
(or stays passive), which is why reloading is just calling the loader again.

The file is shared by every node, so a hostile or mangled one must not be
able to stop them all: parsing is bounded in size (`MAX_BYTES`), nesting
(`MAX_DEPTH`) and expansion (anchors and aliases are refused), every problem
message is short and printable whatever the file holds, and the loader
returns a `LoadResult` for any input. A value that looks like a percentage
where a fraction is meant (`cpu_max: 80`) is fatal: clamping it would run
the cluster at a threshold nobody asked for.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from .bounded import READ_DEADLINE, BoundedCalls, NoAnswerError

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024
"""Largest file read. The example with every key and its comments is under
4 KiB; anything this large is not a balancer.yaml."""

MAX_DEPTH = 8
"""Deepest nesting of collections accepted (the file needs 2: the top-level
mapping and the `exclude_nodes` list). PyYAML's composer recurses per level
and its scanner slows down with the nesting, so the bound comes first."""

MAX_PROBLEMS = 30
"""Problems reported for one file; the rest are summed up in one more."""

SHOWN = 80
"""Characters of a value (or key) quoted in a problem; longer ones are cut."""

_LONGEST_MESSAGE = 300


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
    proactive_hold: float = 30.0
    vm_cooldown: float = 900.0
    exclude_tag: str = "pve-balancer-exclude"
    exclude_nodes: frozenset[str] = field(default_factory=frozenset)
    backup_guard: float = 120.0
    seed: int | None = None
    breaker_failures: int = 3
    breaker_window: float = 1800.0

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
    """What loading produced: `config` is None exactly when a problem is fatal.

    `missing`: there was no file (`config` is then the defaults);
    `unreadable`: the file exists but could not be read (`config` is None),
    as opposed to a file that was read and found wrong. A running agent
    treats both as "keep what is in force" (see `ConfigSource`)."""

    config: Config | None
    problems: tuple[ConfigProblem, ...] = ()
    missing: bool = False
    unreadable: bool = False

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


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _printable(text: str) -> str:
    """`text` with every character that could end a journal line, forge
    another one or drive a terminal (control, format and separator
    characters) written as an escape."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def _clip(text: str, limit: int = SHOWN) -> str:
    """At most `limit` printable characters of `text`, "…" marking a cut."""
    shown = _printable(text[: limit + 1])
    if len(shown) <= limit and len(text) <= limit:
        return shown
    return shown[: limit - 1] + "…"


def _integer(value: int) -> str:
    # Python refuses to print an int of more than 4300 digits, and a YAML
    # binary or hex literal can be far longer than that.
    if value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    return _clip(str(value))


def _text_of(value: object) -> str:
    """Any constructed value as short printable text (for unknown keys)."""
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _integer(value)
    try:
        return _clip(str(value))
    except ValueError:  # a container holding a huge int
        return f"a {type(value).__name__}"


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        quoted = repr(value[:SHOWN])
        return f"the string {quoted}{'…' if len(value) > SHOWN else ''}"
    if isinstance(value, int):
        return f"the number {_integer(value)}"
    if isinstance(value, float):
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
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        raise _ValueError(f"expected a finite number, got {_describe(value)}") from None
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


_SEED_LIMIT = 2**63


def _read_seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ValueError(f"expected an integer or null, got {_describe(value)}")
    # `plan --json` and status.json print it; keep it a plain 64-bit number
    if not -_SEED_LIMIT <= value < _SEED_LIMIT:
        raise _ValueError(f"expected an integer from -2^63 to 2^63-1, got {_describe(value)}")
    return value


@dataclass(frozen=True)
class _Key:
    read: Callable[[object], object]
    low: float | None = None
    high: float | None = None
    fraction: bool = False
    """A share of a whole (0.8 = 80 %): 1 < x <= 100 is read as a
    percentage written by mistake, and refused."""


_KEYS: dict[str, _Key] = {
    "cpu_max": _Key(_read_number, 0.5, 0.9, fraction=True),
    "memory_max": _Key(_read_number, 0.5, 0.9, fraction=True),
    "enabled": _Key(_read_bool),
    "dry_run": _Key(_read_bool),
    "interval": _Key(_read_number, 2.0, 60.0),
    "safety_margin": _Key(_read_number, 0.0, 0.2, fraction=True),
    "proactive_factor": _Key(_read_number, 1.05, 2.0),
    "proactive_margin": _Key(_read_number, 0.0, 0.5, fraction=True),
    "proactive_band": _Key(_read_number, 0.0, 0.5, fraction=True),
    "proactive_hold": _Key(_read_number, 0.0, 3600.0),
    "vm_cooldown": _Key(_read_number, 0.0, None),
    "exclude_tag": _Key(_read_string),
    "exclude_nodes": _Key(_read_node_names),
    "backup_guard": _Key(_read_number, 0.0, None),
    "seed": _Key(_read_seed),
    "breaker_failures": _Key(_read_number, 0.0, 100.0),
    "breaker_window": _Key(_read_number, 60.0, 86400.0),
}

_WHOLE = frozenset({"breaker_failures"})  # counts: read as numbers, kept as integers

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


def _percentage(name: str, number: float) -> str | None:
    """The problem with a percentage given for a fraction, if it is one."""
    if not _KEYS[name].fraction or not 1 < number <= 100:
        return None
    meant = number / 100
    shown = f"{meant:.2f}" if math.isclose(round(meant, 2), meant) else f"{meant:g}"
    return f"{_fmt(number)} looks like a percentage; did you mean {shown}?"


def _clamp(name: str, number: float) -> tuple[float, str | None]:
    key = _KEYS[name]
    if key.low is not None and number < key.low:
        return key.low, f"{_fmt(number)} is below the minimum, clamped to {_fmt(key.low)}"
    if key.high is not None and number > key.high:
        return key.high, f"{_fmt(number)} is above the maximum, clamped to {_fmt(key.high)}"
    return number, None


class _Refused(yaml.MarkedYAMLError):
    """YAML that is valid but not accepted, because it could make a small
    file cost unbounded time or memory."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds of this module, enforced in its
    scanner: before a level of nesting is opened and before any anchor or
    alias is read, so nothing is expanded or recursed into first."""

    def _refuse(self, message: str) -> NoReturn:
        mark = cast(Callable[[], yaml.Mark], self.get_mark)()
        raise _Refused(problem=message, problem_mark=mark)

    def _check_depth(self) -> None:
        if int(self.flow_level) + len(self.indents) >= MAX_DEPTH:
            self._refuse(f"nested deeper than {MAX_DEPTH} levels (a balancer.yaml needs 2); "
                         "not read")

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 - PyYAML's name
        self._check_depth()
        cast(Callable[[type], None], super().fetch_flow_collection_start)(TokenClass)

    def add_indent(self, column: int) -> bool:
        if self.indent < column:
            self._check_depth()
        return bool(cast(Callable[[int], object], super().add_indent)(column))

    def fetch_anchor(self) -> None:
        self._refuse("YAML anchors (&name) and aliases (*name) are not accepted; "
                     "write the value out")

    fetch_alias = fetch_anchor


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


_TOO_LARGE = (f"larger than the {MAX_BYTES // 1024} KiB limit (a balancer.yaml needs a few "
              "hundred bytes); not read")


def _too_large(text: str) -> bool:
    return len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES


def _yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    mark = exc.problem_mark or exc.context_mark
    where = None if mark is None else int(mark.line) + 1
    context = exc.context
    if context and exc.context_mark is not None and exc.context_mark is not mark:
        context = f"{context} started on line {int(exc.context_mark.line) + 1}"
    what = ", ".join(part for part in (context, exc.problem) if part) or "unreadable"
    return where, f"invalid YAML: {what}"


def _reader_problem(exc: yaml.reader.ReaderError, text: str) -> tuple[int | None, str]:
    # Raised for characters YAML forbids (NUL, most control characters, lone
    # surrogates); its own message spans two lines.
    position = exc.position if isinstance(exc.position, int) else None
    line = None if position is None else text.count("\n", 0, position) + 1
    character = exc.character
    if isinstance(character, int):
        return line, f"invalid YAML: the character U+{character:04X} is not allowed"
    return line, "invalid YAML: a character that is not allowed"


def _bounded(problems: list[ConfigProblem], source: str) -> tuple[ConfigProblem, ...]:
    if len(problems) <= MAX_PROBLEMS:
        return tuple(problems)
    kept, rest = problems[: MAX_PROBLEMS - 1], problems[MAX_PROBLEMS - 1:]
    errors = sum(p.fatal for p in rest)
    summary = ConfigProblem(source, None, None,
                            f"{len(rest)} more problems not shown ({errors} errors)",
                            errors > 0)
    return (*kept, summary)


def parse_config(text: str, source: str = "balancer.yaml") -> LoadResult:
    """Parse the text of a configuration file. Never raises, for any text.

    `source` names the file in every problem. Empty text, or a file of only
    comments, means all defaults.
    """
    problems: list[ConfigProblem] = []

    def problem(line: int | None, key: str | None, message: str, fatal: bool) -> None:
        # whatever the file holds, one short printable line per problem
        key = None if key is None else _clip(key)
        problems.append(ConfigProblem(source, line, key, _clip(message, _LONGEST_MESSAGE),
                                      fatal))

    def rejected() -> LoadResult:
        return LoadResult(None, _bounded(problems, source))

    if _too_large(text):
        problem(None, None, _TOO_LARGE, True)
        return rejected()
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
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
            return rejected()

        values: dict[str, object] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in root.value:
            line = _line(key_node)
            try:
                raw_key = _construct(loader, key_node)
            except (ValueError, ArithmeticError) as exc:  # e.g. `? 2001-02-30`
                problem(line, None, f"unreadable key: {exc}", True)
                continue
            name = _text_of(raw_key)
            if not isinstance(raw_key, str) or raw_key not in _KEYS:
                problem(line, name, _unknown_key_message(name), False)
                continue
            if name in seen:
                problem(
                    line, name,
                    f"given again (first on line {seen[name]}); the last value is used",
                    False,
                )
            seen[name] = line
            try:
                raw = _construct(loader, value_node)
            except (ValueError, ArithmeticError) as exc:  # e.g. `cpu_max: 2001-02-30`
                problem(_line(value_node), name, f"unreadable value: {exc}", True)
                continue
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
                percentage = _percentage(name, value)
                if percentage is not None:
                    problem(_line(value_node), name, percentage, True)
                    continue
                value, note = _clamp(name, value)
                if note is not None:
                    problem(_line(value_node), name, note, False)
            values[name] = value
    except _Refused as exc:
        where, _ = _yaml_problem(exc)
        problem(where, None, exc.problem or "not accepted", True)
        return rejected()
    except yaml.MarkedYAMLError as exc:
        where, message = _yaml_problem(exc)
        problem(where, None, message, True)
        return rejected()
    except yaml.reader.ReaderError as exc:
        where, message = _reader_problem(exc, text)
        problem(where, None, message, True)
        return rejected()
    except yaml.YAMLError as exc:
        problem(None, None, f"invalid YAML: {exc}", True)
        return rejected()
    except Exception as exc:  # a bound missed: still no crash, and it says so
        problem(None, None, f"could not be parsed ({type(exc).__name__}: {exc}); not read", True)
        return rejected()
    finally:
        if loader is not None:
            cast(Callable[[], None], loader.dispose)()

    if any(p.fatal for p in problems):
        return rejected()
    for name in _WHOLE & values.keys():
        number = values[name]
        if isinstance(number, float):
            if not number.is_integer():
                problem(None, name, f"{_fmt(number)} is not a whole number, "
                        f"{_fmt(round(number))} is used", False)
            values[name] = round(number)
    return LoadResult(Config(**values), _bounded(problems, source))  # type: ignore[arg-type]


def _unreadable(source: str, reason: str) -> LoadResult:
    problem = ConfigProblem(source, None, None, f"cannot read: {reason}", True)
    return LoadResult(None, (problem,), unreadable=True)


def _read_bounded(path: Path) -> bytes | LoadResult:
    """The bytes of `path`, or the LoadResult saying why there are none."""
    source = str(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return LoadResult(Config(), (), missing=True)
    except OSError as exc:
        return _unreadable(source, exc.strerror or type(exc).__name__)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            return _unreadable(source, "a directory, not a file")
        if not stat.S_ISREG(mode):
            return _unreadable(source, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return _unreadable(source, exc.strerror or type(exc).__name__)
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        return LoadResult(None, (ConfigProblem(source, None, None, _TOO_LARGE, True),))
    return b"".join(chunks)


def load_config(path: Path) -> LoadResult:
    """Load `path`. Never raises. A missing file means all defaults with no
    problem and `missing` set (a fresh cluster needs no file); one that
    cannot be read is fatal, with `unreadable` set."""
    data = _read_bounded(path)
    if isinstance(data, LoadResult):
        return data
    source = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return LoadResult(
            None, (ConfigProblem(source, line, None, "not valid UTF-8 text", True),)
        )
    return parse_config(text, source)


_UNREAD = "unread"
_FIXED = "fixed"
_MISSING = "missing"
_NO_ANSWER = "no answer"


class ConfigSource:
    """The configuration file, re-read when its stat signature changes.

    `config` is the configuration in force: the last one that loaded
    without fatal problems, or None if none ever did (the agent is then
    passive). Only a file that was read and found good changes it:

    - no file at the first read: the defaults (a fresh cluster needs no
      file), said in a WARNING;
    - the file is gone or cannot be read later: the configuration in force
      stays (one WARNING; one INFO when a good file is back), so deleting a
      file that said `dry_run: true` never starts a migration;
    - the file is rejected: the configuration in force stays (an ERROR per
      problem, once per change of the file).

    `refresh` never raises: a failure of the loader itself counts as a
    rejected file.
    """

    def __init__(self, path: Path, calls: BoundedCalls | None = None) -> None:
        self.path = path
        self._calls = calls
        """When given, the stat is bounded: a pmxcfs that holds it (stopping
        or hung) costs the cycle `READ_DEADLINE`, and the configuration in
        force stays (the election says that pmxcfs does not answer)."""
        self.config: Config | None = None
        self._signature: tuple[int, int, int] | str = _UNREAD
        self._trouble = ""
        """Why the file in force is not the file on disk: "" (it is),
        "absent" (there was none at the start: the defaults), "missing"
        (gone since), "unreadable" or "rejected"."""

    @classmethod
    def fixed(cls, config: Config) -> ConfigSource:
        """A source that never reads a file (tests, `plan --config` checks)."""
        src = cls(Path(os.devnull))
        src.config = config
        src._signature = _FIXED
        return src

    def _stat(self) -> tuple[int, int, int] | str:
        try:
            st = self.path.stat() if self._calls is None else \
                self._calls.call(f"stat {self.path}", self.path.stat, READ_DEADLINE)
        except NoAnswerError:
            return _NO_ANSWER
        except FileNotFoundError:
            return _MISSING
        except OSError as exc:
            return f"error {exc.errno}"
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, force: bool = False) -> bool:
        """Re-read if the file changed (or `force`: SIGHUP). Returns True
        when the configuration in force changed. Never raises."""
        if self._signature == _FIXED:
            return False
        signature = self._stat()
        if signature == _NO_ANSWER or (not force and signature == self._signature):
            return False
        first = self._signature == _UNREAD
        self._signature = signature
        try:
            result = load_config(self.path)
        except Exception as exc:  # load_config never raises; if it ever does, stay up
            log.error("loading %s failed", self.path, exc_info=True)
            result = LoadResult(None, (ConfigProblem(
                str(self.path), None, None,
                _clip(f"could not be loaded ({type(exc).__name__}: {exc})", _LONGEST_MESSAGE),
                True),))
        return self._apply(result, first, force)

    def _kept(self) -> str:
        if self.config is None:
            return "staying passive until a valid file exists"
        return f"keeping the last good configuration until it is back: " \
               f"{_config_summary(self.config)}"

    def _apply(self, result: LoadResult, first: bool, force: bool) -> bool:
        path = self.path
        if result.missing:
            if first or self._trouble == "absent":
                if first or force:
                    log.warning("no configuration file %s; using the defaults: %s "
                                "(`pve-balancer setup` installs a commented one)",
                                path, _config_summary(Config()))
                self.config, self._trouble = result.config, "absent"
                return first
            if self._trouble != "missing" or force:
                log.warning("configuration %s is gone; %s (an empty file means the defaults)",
                            path, self._kept())
            self._trouble = "missing"
            return False
        if result.unreadable:
            if self._trouble != "unreadable" or force:
                reason = result.problems[0].message.removeprefix("cannot read: ") \
                    if result.problems else "unknown reason"
                if self.config is None:
                    log.error("cannot read configuration %s (%s); staying passive until it "
                              "can be read", path, reason)
                else:
                    log.warning("cannot read configuration %s (%s); keeping the last good "
                                "configuration: %s", path, reason,
                                _config_summary(self.config))
            self._trouble = "unreadable"
            return False
        for problem in result.problems:
            (log.error if problem.fatal else log.warning)("%s", problem)
        if result.config is None:
            if self.config is None:
                log.error("configuration %s rejected; staying passive until it is fixed",
                          path)
            else:
                log.error("configuration %s rejected; keeping the previous configuration",
                          path)
            self._trouble = "rejected"
            return False
        previous, trouble = self.config, self._trouble
        self.config, self._trouble = result.config, ""
        changed = result.config != previous
        summary = _config_summary(result.config)
        if previous is None or trouble == "absent":
            log.info("configuration %s loaded: %s", path, summary)
        elif trouble in ("missing", "unreadable"):
            log.info("configuration %s is back%s: %s", path, "" if changed else ", unchanged",
                     summary)
        elif changed:
            log.info("configuration %s reloaded: %s", path, summary)
        elif trouble == "rejected":
            log.info("configuration %s accepted again, unchanged: %s", path, summary)
        elif force:
            log.info("configuration %s unchanged: %s", path, summary)
        return changed


def _config_summary(config: Config) -> str:
    flags = []
    if not config.enabled:
        flags.append("disabled (observe only)")
    if config.dry_run:
        flags.append("dry run")
    head = f"cpu_max {config.cpu_max:.2f}, memory_max {config.memory_max:.2f}, " \
           f"interval {config.interval:g} s"
    return ", ".join([head, *flags])
