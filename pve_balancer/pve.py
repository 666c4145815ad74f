"""The only module that knows the Proxmox VE API.

It reads the token file, opens a verified HTTPS client (proxmoxer), and
turns PVE's JSON into `model.Snapshot` with defaulting parsers: PVE omits
fields for stopped guests, older nodes lack `memhost`, and a half-written
answer must cost one skipped entry and a log line, never a crash.

Request budget (what the leader asks for): every cycle exactly
`/cluster/resources` and `/cluster/tasks`, plus at most one of the slow
facts (HA rules, cluster options, backup jobs, HA manager status), each
refreshed every `SLOW_REFRESH` seconds, spread over cycles. None of these is
per node or per guest, so the per-cycle cost does not grow with the
cluster. Per-node RRD (warm-up), migrate preconditions, a guest's config
(its tags, when `/cluster/resources` gave none), `/version` and task status
are asked only when the agent needs them.

Fail closed: every fact carries the time it was last read; a slow fact not
read within `FRESH_FOR`, or statistics missing from `/cluster/resources`,
is named in `Snapshot.missing`, and the agent does not migrate on such a
snapshot. A failed read never turns into "nothing exists".
"""

from __future__ import annotations

import logging
import math
import operator
import os
import re
import ssl
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from .budget import Budget
from .calendar import ScheduleError, next_start
from .model import AffinityRule, Guest, Node, Preconditions, Snapshot, Task, make_guest

log = logging.getLogger(__name__)

SLOW_REFRESH = 60.0
DEFAULT_TIMEOUT = 10.0
"""Seconds one request may take (`connect`'s default): the per-request cap
within a cycle's time budget (`budget`)."""
"""Seconds between refreshes of rules, options, backup jobs and HA status."""

MIGRATION_TASK_TYPES = frozenset({"qmigrate", "hamigrate", "vzmigrate"})
RRD_WINDOW = 120.0
"""Seconds of RRD history used to warm an EMA (the last minute-average
points; the newest one may still be incomplete)."""
RRD_MAX_AGE = 600.0
"""An RRD series whose newest point is further than this from the agent's
clock is not used for warm-up."""


HEADLINES = {
    "unreachable": "cannot reach the PVE API",
    "error-answer": "cannot reach the PVE API",
    "bad-answer": "cannot reach the PVE API",
    "tls": "cannot verify the PVE API",
    "token": "no usable API token",
    "token-refused": "the PVE API refused the token",
}
"""What a cycle that failed on the API says first, by the kind of failure."""


class PveError(Exception):
    """The API could not be asked or answered nonsense. The message names
    the request and the cause, ready for the journal, with what to do where
    the cause is known (a refused token: its file and `pve-balancer setup`;
    TLS: the CA file; a refused connection: the URL).

    `kind` sorts the failure for the journal and monitoring
    (`PVE_BALANCER_PROBLEM`): "unreachable" (no connection, reset, timeout),
    "error-answer" (an HTTP error other than 401/403), "bad-answer" (not
    JSON, not the expected shape), "tls", "token" (no usable token file),
    "token-refused" (HTTP 401/403)."""

    def __init__(self, message: str, status: int | None = None, *, kind: str = "bad-answer",
                 headline: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headline = headline or HEADLINES.get(kind, HEADLINES["unreachable"])

    @property
    def sentence(self) -> str:
        """The journal sentence of a cycle that failed on this."""
        return f"{self.headline}: {self}"


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what requests and urllib3 wrapped inside it (arguments,
    `reason`, cause and context), outermost first."""
    out: list[BaseException] = []
    todo: list[object] = [exc]
    while todo and len(out) < 30:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is x for x in out):
            continue
        out.append(e)
        todo.extend(a for a in e.args if isinstance(a, BaseException))
        todo.extend(x for x in (getattr(e, "reason", None), e.__cause__, e.__context__)
                    if isinstance(x, BaseException))
    return out


def _cert_problem(exc: BaseException) -> str | None:
    """Why the certificate was not accepted, if that is what failed."""
    for e in _causes(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return str(e.verify_message or e.reason or "no reason given")
    return None


def _root_cause(exc: BaseException) -> str:
    """What went wrong at the bottom, in a few words ("Connection refused"),
    or "" when nothing better than the outer text is found."""
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            return str(e.strerror)
    return ""


def _plain(exc: BaseException) -> str:
    """An exception's own text unless it is urllib3's wrapping (pool, object
    addresses), which says nothing to an operator."""
    text = str(exc)
    if not text or "HTTPSConnectionPool" in text or "object at 0x" in text:
        return type(exc).__name__
    return text


class TokenError(ValueError):
    """The API token line or file is unusable; the message says why."""


_TOKEN_RE = re.compile(r"^(?P<user>[^@\s!=]+)@(?P<realm>[A-Za-z0-9][A-Za-z0-9._-]*)"
                       r"!(?P<tokenid>[A-Za-z][A-Za-z0-9._-]*)=(?P<secret>\S+)$")


@dataclass(frozen=True)
class ApiToken:
    """A PVE API token: `USER@REALM!TOKENID=SECRET`. The secret never
    appears in `repr` or in log lines."""

    user: str
    realm: str
    token_name: str
    secret: str = field(repr=False)

    @property
    def userid(self) -> str:
        return f"{self.user}@{self.realm}"

    @property
    def token_id(self) -> str:
        return f"{self.userid}!{self.token_name}"

    @classmethod
    def parse(cls, line: str) -> ApiToken:
        text = line.strip()
        if not text:
            raise TokenError("API token is empty; expected USER@REALM!TOKENID=SECRET")
        if "=" not in text:
            raise TokenError("API token has no secret; expected USER@REALM!TOKENID=SECRET")
        head = text.split("=", 1)[0]
        if "@" not in head:
            raise TokenError(f"API token {head!r} has no realm; expected USER@REALM!TOKENID")
        if "!" not in head:
            raise TokenError(f"API token {head!r} has no token id; expected USER@REALM!TOKENID")
        m = _TOKEN_RE.match(text)
        if not m:
            raise TokenError(f"API token {head!r} is malformed; expected USER@REALM!TOKENID=SECRET")
        return cls(m["user"], m["realm"], m["tokenid"], m["secret"])

    @classmethod
    def read(cls, path: Path) -> ApiToken:
        """The token of the token file (see `find`); a missing file or one
        without a token line is an error too (`TokenError`; `PveClient`
        users get it as a `PveError` of kind "token" from `open_token`)."""
        token = cls.find(path)
        if token is None:
            if not path.exists():
                raise TokenError(f"cannot read API token file {path}: No such file or directory")
            raise TokenError(f"{path}: no token line; expected USER@REALM!TOKENID=SECRET")
        return token

    @classmethod
    def find(cls, path: Path) -> ApiToken | None:
        """The first non-comment line of the token file, parsed; None when
        the file does not exist or holds no such line. A file others can
        read is used but warned about: it grants VM.Migrate."""
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise TokenError(f"cannot read API token file {path}: {reason or exc}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("API token file %s is readable by group/others (mode %o); use 0600",
                        path, stat.S_IMODE(st.st_mode))
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    return cls.parse(line)
                except TokenError as exc:
                    raise TokenError(f"{path}: {exc}") from exc
        return None


# ---------------------------------------------------------------- parsing


NUMBER_LIMIT = 1e18
"""Beyond this no figure PVE gives (bytes, seconds since the epoch, cores)
makes sense: such a number, infinity and NaN read as missing, so that no
OverflowError escapes and no infinite value reaches the policy."""


def _num(value: object, default: float = 0.0) -> float:
    # exact-type fast paths first: called for every number of every guest
    if type(value) is float:
        return value if -NUMBER_LIMIT <= value <= NUMBER_LIMIT else default  # NaN fails too
    if type(value) is int:
        return float(value) if -NUMBER_LIMIT <= value <= NUMBER_LIMIT else default
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return _num(float(value) if -NUMBER_LIMIT <= value <= NUMBER_LIMIT else default,
                    default)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return default
        return number if -NUMBER_LIMIT <= number <= NUMBER_LIMIT else default
    return default


def _int(value: object, default: int = 0) -> int:
    if type(value) is int and -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        return value
    return int(_num(value, float(default)))


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _items(data: object, what: str) -> list[Mapping[str, Any]]:
    """The list PVE should have answered, minus entries that are not objects."""
    if not isinstance(data, list):
        raise PveError(f"{what}: expected a list, got {type(data).__name__}")
    out: list[Mapping[str, Any]] = []
    for entry in data:
        if type(entry) is dict or isinstance(entry, Mapping):  # exact dict: no ABC check
            out.append(entry)
        else:
            log.warning("%s: skipping entry that is not an object: %.80r", what, entry)
    return out


_NO_TAGS: frozenset[str] = frozenset()


def parse_tags(value: object) -> frozenset[str]:
    """PVE separates tags with ';' (also ',' or spaces in older configs)."""
    if value is None or value == "":
        return _NO_TAGS  # most guests: no regex, no new set
    return frozenset(t for t in re.split(r"[;, ]+", _text(value)) if t)


def parse_node(entry: Mapping[str, Any]) -> Node | None:
    name = _text(entry.get("node"))
    if not name:
        log.warning("/cluster/resources: node entry without a name skipped: %.120r", entry)
        return None
    online = _text(entry.get("status")) == "online"
    maxmem = _int(entry.get("maxmem"))
    maxcpu = _int(entry.get("maxcpu"))
    if online and (maxmem <= 0 or maxcpu <= 0):
        # Without capacity the node cannot be judged: treat it as unusable.
        log.warning("/cluster/resources: node %s lacks maxcpu/maxmem; treated as offline", name)
        online = False
    return Node(name=name, online=online, cpu=_num(entry.get("cpu")), maxcpu=maxcpu,
                mem=_int(entry.get("mem")), maxmem=maxmem)


_ABSENT = object()


def parse_guest(entry: Mapping[str, Any]) -> Guest | None:
    """One guest of `/cluster/resources`. Runs for every guest of every
    sample (10,000 times a cycle on a large cluster), so each field takes
    the exact-type fast path inline and calls the general helper (`_text`,
    `_num`, `_int`, `_flag`, `parse_tags`) only when the fast path does not
    apply; the result is the helpers' for every input
    (tests/unit/test_pve_parse_fast.py). The bounds are `NUMBER_LIMIT`
    written out (10**18 and 1e18 are the same number): a constant costs
    less than a global and its negation, 10 % of the whole parse."""
    get = entry.get
    kind = get("type")
    if type(kind) is not str:
        kind = _text(kind)
    vmid = get("vmid")
    if type(vmid) is not int or not -10**18 <= vmid <= 10**18:
        vmid = _int(vmid, -1)
    if vmid < 0:
        m = re.fullmatch(r"(?:qemu|lxc)/(\d+)", _text(get("id")))
        vmid = int(m.group(1)) if m else -1
    node = get("node")
    if type(node) is not str:
        node = _text(node)
    if vmid < 0 or not node:
        log.warning("/cluster/resources: %s entry without vmid or node skipped: %.120r",
                    kind, entry)
        return None
    name = get("name")
    if type(name) is not str:
        name = _text(name)
    status = get("status")
    if type(status) is not str:
        status = _text(status)
    cpu = get("cpu")
    if type(cpu) is not float or not -1e18 <= cpu <= 1e18:
        cpu = _num(cpu)
    maxcpu = get("maxcpu")
    if type(maxcpu) is int and -10**18 <= maxcpu <= 10**18:
        maxcpu = float(maxcpu)
    elif type(maxcpu) is not float or not -1e18 <= maxcpu <= 1e18:
        maxcpu = _num(maxcpu, 1.0)
    mem = get("memhost")
    if mem is None:
        mem = get("mem")
    if type(mem) is not int or not -10**18 <= mem <= 10**18:
        mem = _int(mem)
    maxmem = get("maxmem")
    if type(maxmem) is not int or not -10**18 <= maxmem <= 10**18:
        maxmem = _int(maxmem)
    template = get("template")
    template = _flag(template) if isinstance(template, str) else bool(template)
    lock = get("lock")
    if lock is not None:
        lock = _text(lock) or None
    hastate = get("hastate")
    if hastate is None:
        ha_managed = False
    else:
        hastate = _text(hastate)
        ha_managed = bool(hastate) and hastate != "ignored"
    tags = get("tags", _ABSENT)
    tags_known = tags is not _ABSENT
    return make_guest(vmid, name or f"{kind}{vmid}", node, kind, status or "unknown", cpu,
                      maxcpu, mem, maxmem, template, lock,
                      _NO_TAGS if not tags_known or tags is None or tags == ""
                      else parse_tags(tags),
                      ha_managed, tags_known)


_BY_NAME = operator.attrgetter("name")
_BY_VMID = operator.attrgetter("vmid")


def parse_resources(data: object) -> tuple[tuple[Node, ...], tuple[Guest, ...]]:
    nodes: list[Node] = []
    guests: list[Guest] = []
    add_guest = guests.append
    for entry in _items(data, "/cluster/resources"):
        kind = entry.get("type")
        if kind in ("qemu", "lxc"):
            guest = parse_guest(entry)
            if guest:
                add_guest(guest)
        elif kind == "node":
            node = parse_node(entry)
            if node:
                nodes.append(node)
    return tuple(sorted(nodes, key=_BY_NAME)), tuple(sorted(guests, key=_BY_VMID))


def _vmid_of_resource(sid: str) -> int | None:
    m = re.fullmatch(r"\s*(?:vm|ct):(\d+)\s*", sid) or re.fullmatch(r"\s*(\d+)\s*", sid)
    return int(m.group(1)) if m else None


def parse_rules(data: object) -> tuple[AffinityRule, ...]:
    rules: list[AffinityRule] = []
    for entry in _items(data, "/cluster/ha/rules"):
        kind = _text(entry.get("type"))
        rule_id = _text(entry.get("rule")) or "?"
        if kind not in ("node-affinity", "resource-affinity"):
            log.info("/cluster/ha/rules: rule %s of unknown type %r ignored", rule_id, kind)
            continue
        vmids = frozenset(v for v in (_vmid_of_resource(s)
                                      for s in _text(entry.get("resources")).split(","))
                          if v is not None)
        nodes = frozenset(n.split(":", 1)[0].strip()
                          for n in _text(entry.get("nodes")).split(",") if n.strip())
        affinity = _text(entry.get("affinity")) or "positive"
        rules.append(AffinityRule(rule_id=rule_id, kind=kind, vmids=vmids, nodes=nodes,
                                  affinity=affinity, enabled=not _flag(entry.get("disable"))))
    return tuple(rules)


def parse_auto_rebalance(options: object) -> bool:
    """Whether `/cluster/options` `crs` turns on PVE's own HA auto-rebalance.
    PVE may answer the property string parsed (object) or raw."""
    if not isinstance(options, Mapping):
        return False
    crs = options.get("crs")
    if isinstance(crs, Mapping):
        return _flag(crs.get("ha-auto-rebalance"))
    for part in _text(crs).split(","):
        key, _, value = part.partition("=")
        if key.strip() == "ha-auto-rebalance":
            return _flag(value)
    return False


def parse_maintenance(manager_status: object) -> frozenset[str]:
    """Nodes in HA maintenance mode, from `/cluster/ha/status/manager_status`."""
    if not isinstance(manager_status, Mapping):
        return frozenset()
    out: set[str] = set()
    ms = manager_status.get("manager_status")
    node_status = ms.get("node_status") if isinstance(ms, Mapping) else None
    if isinstance(node_status, Mapping):
        out.update(str(n) for n, s in node_status.items() if s == "maintenance")
    lrm = manager_status.get("lrm_status")
    if isinstance(lrm, Mapping):
        out.update(str(n) for n, s in lrm.items()
                   if isinstance(s, Mapping) and s.get("mode") == "maintenance")
    return frozenset(out)


def parse_upid(upid: str) -> tuple[str, str, str]:
    """(node, task type, id) from `UPID:node:pid:pstart:starttime:type:id:user:`."""
    parts = upid.split(":")
    if len(parts) < 8 or parts[0] != "UPID":
        raise PveError(f"not a UPID: {upid!r}")
    return parts[1], parts[5], parts[6]


def parse_task(entry: Mapping[str, Any]) -> Task | None:
    upid = _text(entry.get("upid"))
    try:
        node, kind, vmid = parse_upid(upid)
    except PveError:
        log.warning("/cluster/tasks: entry with bad upid skipped: %.120r", entry)
        return None
    status = entry.get("status")
    end = entry.get("endtime")
    running = end is None and (status is None or status == "running")
    return Task(upid=upid, node=_text(entry.get("node")) or node,
                kind=_text(entry.get("type")) or kind, vmid=_text(entry.get("id")) or vmid,
                running=running, exitstatus=None if running else _text(status) or None,
                starttime=_num(entry.get("starttime")),
                endtime=None if end is None else _num(end))


def parse_tasks(data: object) -> tuple[Task, ...]:
    return tuple(t for t in (parse_task(e) for e in _items(data, "/cluster/tasks")) if t)


@dataclass(frozen=True)
class BackupJob:
    job_id: str
    schedule: str
    next_run: float | None  # PVE's own computation, when given


def parse_backup_jobs(data: object) -> tuple[BackupJob, ...]:
    jobs: list[BackupJob] = []
    for entry in _items(data, "/cluster/backup"):
        if "enabled" in entry and not _flag(entry.get("enabled")):
            continue
        nr = entry.get("next-run")
        jobs.append(BackupJob(job_id=_text(entry.get("id")) or "?",
                              schedule=_text(entry.get("schedule")) or _legacy_schedule(entry),
                              next_run=_num(nr) if nr is not None else None))
    return tuple(jobs)


def _legacy_schedule(entry: Mapping[str, Any]) -> str:
    start = _text(entry.get("starttime"))
    dow = _text(entry.get("dow"))
    return f"{dow} {start}".strip() if start else ""


def next_backup_start(jobs: Iterable[BackupJob], now: float) -> float | None:
    """Seconds until the earliest backup job starts; 0.0 when a job's time
    cannot be known (conservative: the backup guard then holds)."""
    best: float | None = None
    for job in jobs:
        when: float | None = None
        if job.next_run is not None and job.next_run > now:
            when = job.next_run
        elif job.schedule:
            try:
                when = next_start(job.schedule, now)
            except ScheduleError as exc:
                log.warning("backup job %s: schedule %r not understood (%s); assuming it may "
                            "start any moment", job.job_id, job.schedule, exc)
                when = now
        else:
            log.warning("backup job %s has no schedule; assuming it may start any moment",
                        job.job_id)
            when = now
        best = when if best is None else min(best, when)
    return None if best is None else max(0.0, best - now)


def _options(data: object, now: float) -> bool:
    if not isinstance(data, Mapping):
        raise PveError(f"/cluster/options: expected an object, got {type(data).__name__}")
    return parse_auto_rebalance(data)


def _manager(data: object, now: float) -> frozenset[str]:
    if not isinstance(data, Mapping) or not any(
            isinstance(data.get(k), Mapping) for k in ("manager_status", "lrm_status")):
        raise PveError("/cluster/ha/status/manager_status: neither manager_status nor "
                       "lrm_status in the answer")
    return parse_maintenance(data)


@dataclass(frozen=True)
class SlowFact:
    """A fact the policy needs that changes rarely, so it is read every
    `SLOW_REFRESH` s rather than every cycle; `parse` turns the answer
    into the value kept (raising `PveError` when it is unusable, which
    counts as a failed read)."""

    key: str
    label: str
    path: tuple[str, ...]
    parse: Callable[[object, float], Any]


SLOW_FACTS = (
    SlowFact("rules", "HA rules", ("cluster", "ha", "rules"), lambda d, _n: parse_rules(d)),
    SlowFact("options", "cluster options", ("cluster", "options"), _options),
    SlowFact("backup", "backup jobs", ("cluster", "backup"), lambda d, _n: parse_backup_jobs(d)),
    SlowFact("manager", "HA manager status", ("cluster", "ha", "status", "manager_status"),
             _manager),
)
"""In the order a new term reads them: one per cycle."""

FRESH_FOR = 2 * SLOW_REFRESH
"""A slow fact read longer ago than this is not used for a decision (two
refreshes failed in a row): the agent does not migrate until it is read."""


def _missing_statistics(data: object) -> list[str]:
    """Statistics `/cluster/resources` should carry but did not: an online
    node without `cpu` or `mem` would look idle (the best target), a
    running VM without them would look free to move."""
    if not isinstance(data, list):
        return []
    nodes: list[str] = []
    guests: list[str] = []
    for e in data:
        if not isinstance(e, Mapping):
            continue
        if e.get("type") == "node" and _text(e.get("status")) == "online" and (
                e.get("cpu") is None or e.get("mem") is None):
            nodes.append(_text(e.get("node")) or "?")
        elif e.get("type") == "qemu" and _text(e.get("status")) == "running" and (
                e.get("cpu") is None or (e.get("mem") is None and e.get("memhost") is None)):
            guests.append(_text(e.get("vmid")) or "?")
    out = [f"statistics of node {n} (no cpu or mem in /cluster/resources)" for n in nodes]
    if guests:
        shown = ", ".join(guests[:3]) + (f" and {len(guests) - 3} more" if len(guests) > 3
                                         else "")
        out.append(f"statistics of running vm {shown} (no cpu or mem in /cluster/resources)")
    return out


def parse_rrd_cpu(data: object, now: float, window: float = RRD_WINDOW,
                  what: str = "rrddata") -> list[tuple[float, float]]:
    """(time, cpu) points of the last `window` seconds of the series (by the
    newest point's time), oldest first, skipping points without a CPU value
    (PVE leaves gaps). A series whose newest point is more than
    `RRD_MAX_AGE` away from `now` is stale (node was down) or from a skewed
    clock, and is not used."""
    points: list[tuple[float, float]] = []
    for entry in _items(data, what):
        t = _num(entry.get("time"), math.nan)
        cpu = _num(entry.get("cpu"), math.nan)
        if isinstance(entry.get("time"), str) or isinstance(entry.get("cpu"), str):
            continue  # a gap is missing, never text
        if math.isfinite(t) and math.isfinite(cpu):
            points.append((t, cpu))
    if not points:
        return []
    points.sort()
    newest = points[-1][0]
    if abs(now - newest) > RRD_MAX_AGE:
        log.info("%s: newest point is %.0f s from our clock; not used", what, now - newest)
        return []
    return [p for p in points if p[0] >= newest - window]


def parse_preconditions(vmid: int, data: object) -> Preconditions:
    if not isinstance(data, Mapping):
        raise PveError(f"migrate preconditions of {vmid}: expected an object")
    disks: list[str] = []
    raw_disks = data.get("local_disks")
    if isinstance(raw_disks, list):
        for d in raw_disks:
            if isinstance(d, Mapping):
                if _flag(d.get("cdrom")) and _text(d.get("volid")) in ("", "none"):
                    continue
                disks.append(_text(d.get("volid")) or "?")
            else:
                disks.append(_text(d))
    raw_res = data.get("local_resources")
    resources = [_text(r) for r in raw_res] if isinstance(raw_res, list) else []
    allowed = data.get("allowed_nodes")
    not_allowed = data.get("not_allowed_nodes")
    return Preconditions(
        vmid=vmid, local_disks=tuple(disks), local_resources=tuple(r for r in resources if r),
        allowed_nodes=frozenset(_text(n) for n in allowed) if isinstance(allowed, list) else None,
        not_allowed=frozenset(str(n) for n in not_allowed)
        if isinstance(not_allowed, Mapping) else frozenset())


def parse_major_version(data: object) -> int:
    if isinstance(data, Mapping):
        m = re.match(r"(\d+)", _text(data.get("release")) or _text(data.get("version")))
        if m:
            return int(m.group(1))
    raise PveError("/version: no release number in the answer")


# ----------------------------------------------------------------- client


@dataclass
class _Held:
    """A slow fact as last read: its parsed value, when it was last read
    successfully (None: never), the last attempt and its error."""

    value: Any = None
    fetched: float | None = None
    attempted: float = -math.inf
    error: str = ""
    stale_term: bool = False

    def due(self, now: float) -> bool:
        return self.fetched is None or self.stale_term or now - self.fetched >= SLOW_REFRESH


class PveClient:
    """A verified connection to one node's API plus the cluster view built
    from it. All methods raise `PveError` on failure, never proxmoxer's or
    requests' exceptions."""

    def __init__(self, api: Any, *, url: str = "", ca: str | None = None,
                 token_id: str = "", token_file: Path | None = None,
                 timeout: float | None = None) -> None:
        self.api = api
        self.url = url
        """Where the API is, the CA that verifies it and the token: named in
        error messages so the operator knows what to check."""
        self.ca = ca
        self.token_id = token_id
        self.token_file = token_file
        self.timeout = timeout
        self._slow: dict[str, _Held] = {f.key: _Held() for f in SLOW_FACTS}
        self.budget: Budget | None = None
        """The time budget of the current cycle (set by the environment per
        cycle; None: each request only has its own `timeout`)."""
        self._version: int | None = None
        self.requests = 0
        """API calls made through this client (tests and `plan` report it)."""

    # -- low level

    def _request_timeout(self, method: str, request: str) -> float | None:
        """This request's timeout: the per-request cap, shortened to what is
        left of the cycle's budget (`BudgetSpentError` when too little is).
        A POST always gets the whole cap: the caller checked the budget
        before it (`budget.Budget.post_allowed`), and a POST cut short may
        still have started a migration."""
        if self.budget is None or method != "GET":
            return self.timeout
        cap = self.timeout if self.timeout else DEFAULT_TIMEOUT
        return self.budget.timeout(cap, request)

    def _set_timeout(self, seconds: float | None) -> None:
        # proxmoxer takes a request's timeout from the session's auth object
        # (`ProxmoxHttpSession.request`: `timeout = auth.timeout`).
        session = getattr(self.api, "_store", {}).get("session")
        auth = getattr(session, "auth", None)
        if auth is not None and hasattr(auth, "timeout") and seconds is not None:
            auth.timeout = seconds

    def _call(self, method: str, path: Sequence[str | int], **params: Any) -> Any:
        text = "/" + "/".join(str(p) for p in path)
        timeout = self._request_timeout(method, f"{method} {text}")
        self._set_timeout(timeout)
        self.requests += 1
        try:
            resource = self.api(list(path)) if path else self.api
            if method == "GET":
                return resource.get(**params)
            return resource.post(**params)
        except ResourceException as exc:
            raise self._http_error(method, text, exc) from exc
        except requests.exceptions.SSLError as exc:
            raise self._tls_error(method, text, exc) from exc
        except requests.exceptions.Timeout as exc:
            if method == "GET" and self.budget is not None and timeout is not None and \
                    self.timeout and timeout < self.timeout:
                raise self.budget.cut_off(f"{method} {text}") from exc
            after = f" after {timeout:g} s" if timeout else ""
            raise PveError(f"{method} {text}: timed out{after}", kind="unreachable") from exc
        except requests.exceptions.ConnectionError as exc:
            raise self._connection_error(method, text, exc) from exc
        except requests.exceptions.RequestException as exc:
            raise PveError(f"{method} {text}: {type(exc).__name__}: {_plain(exc)}",
                           kind="unreachable") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise PveError(f"{method} {text}: unreadable answer ({exc})") from exc

    # -- errors, named for an operator

    def _where(self) -> str:
        return self.url or "the API"

    def _http_error(self, method: str, text: str, exc: ResourceException) -> PveError:
        status = exc.status_code
        message = f"{method} {text}: HTTP {status} {exc.content}".strip()
        if status in (401, 403):
            who = f"the PVE API refused the token {self.token_id}".strip()
            if status == 401:
                where = f"the token in {self.token_file}" if self.token_file else "the API token"
                hint = f"check {where} or run `pve-balancer setup`"
            else:
                hint = ("`pve-balancer setup` grants the token the PVEBalancer role "
                        "(Sys.Audit, VM.Audit, VM.Migrate on /)")
            return PveError(f"{message}; {hint}", status=status, kind="token-refused",
                            headline=who)
        return PveError(message, status=status, kind="error-answer")

    def _tls_error(self, method: str, text: str, exc: Exception) -> PveError:
        problem = _cert_problem(exc)
        ca = f"the CA in {self.ca}" if self.ca else "the system's CA store"
        if problem is not None:
            detail = f"certificate verify failed ({problem}) against {ca}"
        else:
            inner = next((e for e in _causes(exc) if isinstance(e, ssl.SSLError)), None)
            why = (inner.reason or inner.strerror) if inner is not None else None
            detail = f"TLS handshake failed ({why or _root_cause(exc) or _plain(exc)})"
        return PveError(f"{method} {text}: {detail}", kind="tls",
                        headline=f"cannot verify the PVE API at {self._where()}")

    def _connection_error(self, method: str, text: str, exc: Exception) -> PveError:
        cause = _root_cause(exc)
        if "refused" in cause.lower():
            return PveError(f"connection to {self._where()} refused ({method} {text}); is "
                            "pveproxy running?", kind="unreachable")
        if cause:
            return PveError(f"connection to {self._where()} failed ({method} {text}): {cause}",
                            kind="unreachable")
        return PveError(f"{method} {text}: {_plain(exc)}", kind="unreachable")

    def get(self, *path: str | int, **params: Any) -> Any:
        data = self._call("GET", path, **params)
        if isinstance(data, Mapping) and set(data) == {"errors"} and isinstance(
                data["errors"], bytes | str):
            # proxmoxer's way of saying the body was not JSON.
            raise PveError(f"GET /{'/'.join(str(p) for p in path)}: body is not JSON",
                           kind="bad-answer")
        return data

    def _due_slow(self, now: float) -> SlowFact | None:
        """The slow fact to refresh now: among those older than
        `SLOW_REFRESH` (or never read, or marked due by a new term), the
        one whose last attempt is oldest, so a failing endpoint does not
        starve the others."""
        due = [f for f in SLOW_FACTS if self._slow[f.key].due(now)]
        if not due:
            return None
        return min(due, key=lambda f: self._slow[f.key].attempted)

    def refresh_slow(self, now: float, budget: int | None = 1) -> None:
        """Refresh at most `budget` (None: all due) slow facts. A failed
        read keeps the previous value with its old read time, so the value
        goes stale (`missing_facts`) instead of being trusted forever."""
        done = 0
        while budget is None or done < budget:
            fact = self._due_slow(now)
            if fact is None or self._slow[fact.key].attempted == now:
                return
            done += 1
            held = self._slow[fact.key]
            held.attempted = now
            try:
                held.value = fact.parse(self.get(*fact.path), now)
            except PveError as exc:
                held.error = str(exc)
                log.debug("%s: %s (retried next cycle)", fact.label, exc)
                continue
            held.fetched = now
            held.error = ""
            held.stale_term = False

    def invalidate_slow(self) -> None:
        """A new term: refresh every slow fact soon (one per cycle), but
        keep what was read, with its read time; a value too old for
        `FRESH_FOR` holds decisions back until it is read again."""
        for held in self._slow.values():
            held.stale_term = True

    def missing_facts(self, now: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The slow facts not read fresh (within `FRESH_FOR`), each as
        "what (why)" for the journal: (all of them, those whose last read
        failed). A fact merely not asked yet (a term began, the API was
        down) is in the first only."""
        missing: list[str] = []
        failed: list[str] = []
        for fact in SLOW_FACTS:
            held = self._slow[fact.key]
            why = f": {held.error}" if held.error else ""
            if held.fetched is None:
                text = f"{fact.label} (not read yet{why})"
            elif now - held.fetched > FRESH_FOR:
                text = f"{fact.label} (last read {now - held.fetched:.0f} s ago{why})"
            else:
                continue
            missing.append(text)
            if held.error:
                failed.append(text)
        return tuple(missing), tuple(failed)

    def slow_value(self, key: str) -> Any:
        return self._slow[key].value

    # -- cluster view

    def sample(self, now: float, slow: int | None = None) -> tuple[Snapshot, tuple[Task, ...]]:
        """One snapshot of the cluster plus the task list it was built from.

        `/cluster/resources` and `/cluster/tasks` are read every time (a
        failure raises); of the slow facts at most `slow` are refreshed
        (None: every one due, as a one-shot command such as `plan` or
        `status` needs; the daemon's cycles pass 1), the others come from
        the cache. `Snapshot.missing` names
        every fact not read fresh (`unreadable` those whose read failed):
        the agent does not migrate on such a snapshot."""
        resources = self.get("cluster", "resources")
        nodes, guests = parse_resources(resources)
        tasks = parse_tasks(self.get("cluster", "tasks"))
        self.refresh_slow(now, slow)
        missing, failed = self.missing_facts(now)
        broken = tuple(_missing_statistics(resources))
        maintenance: frozenset[str] = self.slow_value("manager") or frozenset()
        if maintenance:
            nodes = tuple(Node(n.name, n.online, n.cpu, n.maxcpu, n.mem, n.maxmem,
                               maintenance=n.name in maintenance) for n in nodes)
        jobs: tuple[BackupJob, ...] = self.slow_value("backup") or ()
        running = [t.upid for t in tasks if t.running and t.kind in MIGRATION_TASK_TYPES]
        snapshot = Snapshot(
            time=now, nodes=nodes, guests=guests, rules=self.slow_value("rules") or (),
            ha_auto_rebalance=bool(self.slow_value("options")),
            migrations_running=tuple(running),
            backup_running=any(t.running and t.kind == "vzdump" for t in tasks),
            next_backup_in=next_backup_start(jobs, now), missing=(*missing, *broken),
            unreadable=(*failed, *broken))
        return snapshot, tasks

    def guest_tags(self, node: str, vmid: int) -> frozenset[str]:
        """The tags in a guest's own configuration, for a guest whose
        `/cluster/resources` entry carried no `tags` field (PVE leaves it
        out when there are none, and so does a half-written answer)."""
        data = self.get("nodes", node, "qemu", vmid, "config")
        if not isinstance(data, Mapping):
            raise PveError(f"GET /nodes/{node}/qemu/{vmid}/config: expected an object")
        return parse_tags(data.get("tags"))

    # -- warm-up

    def node_cpu_history(self, node: str, now: float) -> list[tuple[float, float]]:
        data = self.get("nodes", node, "rrddata", timeframe="hour", cf="AVERAGE")
        return parse_rrd_cpu(data, now, what=f"/nodes/{node}/rrddata")

    def guest_cpu_history(self, node: str, vmid: int, now: float) -> list[tuple[float, float]]:
        data = self.get("nodes", node, "qemu", vmid, "rrddata", timeframe="hour", cf="AVERAGE")
        return parse_rrd_cpu(data, now, what=f"/nodes/{node}/qemu/{vmid}/rrddata")

    # -- migrations

    def major_version(self) -> int:
        """PVE major release of the node we talk to (cached for the life of
        the client; an upgrade restarts the agent anyway)."""
        if self._version is None:
            self._version = parse_major_version(self.get("version"))
        return self._version

    def preconditions(self, node: str, vmid: int, target: str) -> Preconditions:
        data = self.get("nodes", node, "qemu", vmid, "migrate", target=target)
        return parse_preconditions(vmid, data)

    def migrate(self, node: str, vmid: int, target: str,
                fence: Callable[[], None] | None = None) -> str:
        """Start a live migration; returns the UPID PVE answered. `fence`
        runs after every other request, immediately before the POST; what
        it raises stops the POST (`fence.check`)."""
        params: dict[str, Any] = {"target": target, "online": 1}
        try:
            if self.major_version() >= 9:
                params["with-conntrack-state"] = 1
        except PveError as exc:
            log.warning("%s; migrating without conntrack state", exc)
        if fence is not None:
            fence()
        upid = self._call("POST", ("nodes", node, "qemu", vmid, "migrate"), **params)
        if not isinstance(upid, str) or not upid.startswith("UPID:"):
            raise PveError(f"POST /nodes/{node}/qemu/{vmid}/migrate: no task id in the answer "
                           f"({upid!r:.80})")
        return upid

    def task_status(self, upid: str) -> Task:
        node, _kind, _id = parse_upid(upid)
        data = self.get("nodes", node, "tasks", upid, "status")
        if not isinstance(data, Mapping):
            raise PveError(f"task {upid}: status is not an object")
        running = _text(data.get("status")) == "running"
        merged = dict(data)
        merged.setdefault("upid", upid)
        task = parse_task({**merged, "status": "running" if running else
                           (_text(data.get("exitstatus")) or "unknown"),
                           "endtime": None if running else data.get("endtime", 0)})
        if task is None:
            raise PveError(f"task {upid}: unreadable status")
        return task


def connect(api_url: str, token: ApiToken, verify: str | bool = True,
            timeout: float = DEFAULT_TIMEOUT, token_file: Path | None = None) -> PveClient:
    """A client for the API at `api_url` (e.g. https://localhost:8006).

    `verify` is a CA bundle path (normally `/etc/pve/pve-root-ca.pem`), True
    for the system store, or False (never by default). `token_file`, where
    the token was read from, is named when the API refuses the token.
    Nothing is sent until the first request.
    """
    parts = urlsplit(api_url if "://" in api_url else f"https://{api_url}")
    if parts.scheme != "https":
        raise PveError(f"API URL {api_url!r}: only https is supported", kind="unreachable")
    if not parts.hostname:
        raise PveError(f"API URL {api_url!r}: no host", kind="unreachable")
    if isinstance(verify, str) and not os.path.exists(verify):
        raise PveError(f"CA file {verify} does not exist (needed to verify {api_url})",
                       kind="tls", headline=f"cannot verify the PVE API at {api_url}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    api = ProxmoxAPI(host, port=parts.port or 8006, user=token.userid,
                     token_name=token.token_name, token_value=token.secret,
                     verify_ssl=verify, timeout=timeout, backend="https", service="PVE")
    return PveClient(api, url=api_url, ca=verify if isinstance(verify, str) else None,
                     token_id=token.token_id, token_file=token_file, timeout=timeout)


def open_token(path: Path) -> ApiToken:
    """The token of the token file, or a `PveError` of kind "token" that says
    what is wrong with the file and how to get one."""
    try:
        return ApiToken.read(path)
    except TokenError as exc:
        raise PveError(f"{exc}; `pve-balancer setup` writes it", kind="token") from exc
