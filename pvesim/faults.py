"""API fault injection: make the simulated PVE misbehave the ways a real one does.

`FaultInjector(handler)` wraps any `ApiHandler` (normally the Simulator) and
is itself an `ApiHandler`, so both the HTTPS server and the in-process
transport serve faults through the same code. A fault matches on HTTP
method, a path pattern (glob, or a regular expression) and optionally the
node whose API received the call, and fires for the next `count` matching
calls and/or with a seeded `probability`.

Kinds, and what a client sees:
- `latency`: the answer comes `seconds` late. Over HTTPS the server really
  sleeps; in-process the delay is virtual (handed to the transport's sleep
  hook, see `virtual_latency`).
- `timeout`: no answer at all. Raises `SimulatedTimeoutError`, which the HTTPS
  server turns into a connection that stays silent until the client gives
  up, and the in-process transport into `requests.exceptions.ReadTimeout`.
  With `executed=True` the call is carried out first and only the answer is
  lost (a migrate POST that timed out but did start the migration).
- `connection_reset`: the connection is torn down without an answer (a
  pveproxy restart, a proxy dropping it): `SimulatedResetError`, which the
  HTTPS server turns into a TCP reset and the in-process transport into
  `requests.exceptions.ConnectionError`. `executed=True` as for `timeout`.
- `http_error`: PVE's error shape: status (default 500), the message as HTTP
  reason phrase, body `{"data": null}` (as `pvesim.api` answers errors); the
  call is not executed.
- `malformed_json`: a 200 whose body is not valid JSON (a trailing comma).
- `truncated_json`: a 200 whose body is cut in half (Content-Length matches
  the cut body, so only the JSON parser notices).
- `missing_fields`: the named keys are removed from `data` (from the object,
  or from every object of a list).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pvesim.protocol import ApiHandler, ApiRequest, ApiResponse

KINDS = (
    "latency",
    "timeout",
    "connection_reset",
    "http_error",
    "malformed_json",
    "truncated_json",
    "missing_fields",
)


class SimulatedTimeoutError(Exception):
    """The API never answers this call. `hold` is how long a server should
    keep the connection silent at most (the client normally gives up first)."""

    def __init__(self, hold: float) -> None:
        super().__init__(f"simulated timeout (hold {hold:g} s)")
        self.hold = hold


class SimulatedResetError(Exception):
    """The connection is reset before any answer is sent."""


_latency_sink: ContextVar[Callable[[float], None] | None] = ContextVar(
    "pvesim_latency_sink", default=None
)


@contextlib.contextmanager
def virtual_latency(sink: Callable[[float], None]) -> Iterator[None]:
    """Within this context, latency faults call `sink(seconds)` instead of
    sleeping (the in-process transport uses it so stepped runs stay fast)."""
    token = _latency_sink.set(sink)
    try:
        yield
    finally:
        _latency_sink.reset(token)


def _delay(seconds: float) -> None:
    sink = _latency_sink.get()
    if sink is None:
        time.sleep(seconds)
    else:
        sink(seconds)


def pve_error(status: int, message: str) -> ApiResponse:
    """An error answer shaped like pveproxy's: the message is the reason
    phrase (one line), the body `{"data":null}`."""
    reason = " ".join(message.split()) or "error"
    body = json.dumps({"data": None}, separators=(",", ":")).encode()
    return ApiResponse(
        status=status,
        body=body,
        reason=reason,
        headers={"content-type": "application/json;charset=UTF-8"},
    )


@dataclass
class Fault:
    """One injected fault. `count=None` means unlimited; `probability` is
    drawn from the injector's seeded generator for each matching call."""

    kind: str
    method: str = "*"
    path: str = "*"
    path_regex: str | None = None
    node: str | None = None
    count: int | None = None
    probability: float = 1.0
    seconds: float | None = None
    status: int = 500
    message: str = "Internal Server Error"
    fields: tuple[str, ...] = ()
    executed: bool = False
    id: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        self.method = self.method.upper()
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability {self.probability}: must be within 0..1")
        if self.count is not None and self.count < 0:
            raise ValueError(f"fault count {self.count}: must be >= 0")
        if self.seconds is None:
            # latency: one second late; timeout: stay silent for up to a
            # minute (every sane client gives up long before that).
            self.seconds = 60.0 if self.kind == "timeout" else 1.0
        self.seconds = float(self.seconds)
        if self.seconds < 0:
            raise ValueError(f"fault seconds {self.seconds}: must be >= 0")
        if self.kind == "http_error" and not 500 <= self.status <= 599:
            raise ValueError(f"fault status {self.status}: http_error must be 5xx")
        if self.kind == "missing_fields" and not self.fields:
            raise ValueError("missing_fields fault needs at least one field name")
        self.fields = tuple(self.fields)
        if self.path_regex is not None:
            try:
                re.compile(self.path_regex)
            except re.error as exc:
                raise ValueError(f"fault path_regex {self.path_regex!r}: {exc}") from exc

    def matches(self, req: ApiRequest) -> bool:
        if self.method not in ("*", req.method.upper()):
            return False
        if self.node is not None and self.node != req.served_by:
            return False
        if self.path_regex is not None:
            return re.fullmatch(self.path_regex, req.path) is not None
        return fnmatch.fnmatchcase(req.path, self.path)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fields"] = list(self.fields)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        known = {f for f in cls.__dataclass_fields__ if f not in ("id", "fired")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"fault: unknown key(s) {', '.join(unknown)}")
        if "kind" not in data:
            raise ValueError("fault: 'kind' is required")
        args = dict(data)
        kinds: dict[str, tuple[type, ...]] = {
            "kind": (str,), "method": (str,), "path": (str,), "path_regex": (str, type(None)),
            "node": (str, type(None)), "count": (int, type(None)),
            "probability": (int, float), "seconds": (int, float, type(None)),
            "status": (int,), "message": (str,), "executed": (bool,),
            "fields": (list, tuple, str),
        }
        for key, value in args.items():
            allowed = kinds[key]
            wrong_bool = isinstance(value, bool) and bool not in allowed
            if wrong_bool or not isinstance(value, allowed):
                names = "/".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"fault {key}: expected {names}, got {value!r}")
        if "fields" in args:
            fields_value = args["fields"]
            if isinstance(fields_value, str):
                fields_value = [f for f in fields_value.split(",") if f]
            args["fields"] = tuple(str(f) for f in fields_value)
        return cls(**args)


def _drop_fields(body: bytes, names: tuple[str, ...]) -> bytes:
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict):
        return body
    data = doc.get("data")
    items = data if isinstance(data, list) else [data]
    for item in items:
        if isinstance(item, dict):
            for name in names:
                item.pop(name, None)
    return json.dumps(doc).encode()


def _malform(body: bytes) -> bytes:
    text = body.rstrip()
    if text.endswith(b"}"):
        return text[:-1] + b",}"
    return b"{" + text


def _truncate(body: bytes) -> bytes:
    return body[: max(1, len(body) // 2)]


def _lose_answer(fault: Fault) -> None:
    if fault.kind == "connection_reset":
        raise SimulatedResetError(f"connection reset (fault {fault.id})")
    raise SimulatedTimeoutError(fault.seconds or 0.0)


@dataclass
class _Decision:
    latency: float = 0.0
    timeout: Fault | None = None
    error: Fault | None = None
    mutations: list[Fault] = field(default_factory=list)


class FaultInjector:
    """An `ApiHandler` that passes calls to `handler` unless a fault fires."""

    def __init__(self, handler: ApiHandler, seed: int = 0) -> None:
        self.inner = handler
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    # -- management -------------------------------------------------------
    def add(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Add a fault (a `Fault`, or its fields as keywords); returns it with its id."""
        if fault is None:
            fault = Fault(**kwargs)
        elif kwargs:
            raise TypeError("add(): give a Fault or keywords, not both")
        with self._lock:
            fault = replace(fault, id=self._next_id, fired=0)
            self._next_id += 1
            self._faults.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return [replace(f) for f in self._faults]

    def node_reachable(self, name: str) -> bool:
        probe = getattr(self.inner, "node_reachable", None)
        return True if probe is None else bool(probe(name))

    # -- the handler ------------------------------------------------------
    def _decide(self, req: ApiRequest) -> _Decision:
        decision = _Decision()
        with self._lock:
            for fault in self._faults:
                if fault.exhausted or not fault.matches(req):
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                if fault.kind == "latency":
                    decision.latency += fault.seconds or 0.0
                elif fault.kind in ("timeout", "connection_reset"):
                    decision.timeout = decision.timeout or fault
                elif fault.kind == "http_error":
                    decision.error = decision.error or fault
                else:
                    decision.mutations.append(fault)
        return decision

    def handle(self, request: ApiRequest) -> ApiResponse:
        decision = self._decide(request)
        if decision.latency > 0:
            _delay(decision.latency)
        timeout = decision.timeout
        if timeout is not None and not timeout.executed:
            _lose_answer(timeout)
        if decision.error is not None:
            return pve_error(decision.error.status, decision.error.message)
        response = self.inner.handle(request)
        if timeout is not None:
            _lose_answer(timeout)
        body = response.body
        for fault in decision.mutations:
            if fault.kind == "missing_fields":
                body = _drop_fields(body, fault.fields)
            elif fault.kind == "malformed_json":
                body = _malform(body)
            elif fault.kind == "truncated_json":
                body = _truncate(body)
        if body is response.body:
            return response
        return replace(response, body=body)
