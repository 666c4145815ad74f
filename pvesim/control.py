"""The simulator's control surface: Python API, HTTP endpoints, HTTP client.

Things an operator or a test does *to* the cluster rather than through its
API — advance time, pull a node's power, cut its network, flip maintenance,
inject API faults, read metrics and the request log — live outside `/api2`
on a separate loopback port, so nothing a PVE client could send ever reaches
them. Every call needs the control token from the connection file
(`Authorization: Bearer <token>`).

Endpoints (JSON in, `{"data": ...}` out; errors `{"error": "..."}` with 4xx):

    GET    /_sim/state                      clock, speed, nodes (reachable, powered, ...)
    POST   /_sim/advance        {"seconds": S}
    POST   /_sim/pause | /_sim/resume
    POST   /_sim/speed          {"speed": X}
    POST   /_sim/nodes/NODE/power        {"on": true|false}
    POST   /_sim/nodes/NODE/network      {"up": true|false}
    POST   /_sim/nodes/NODE/maintenance  {"on": true|false}
    GET    /_sim/faults
    POST   /_sim/faults         {"kind": ..., "path": ..., ...}  (see pvesim.faults.Fault)
    DELETE /_sim/faults                     remove all
    DELETE /_sim/faults/ID
    GET    /_sim/metrics
    GET    /_sim/requests?since=N           request log entries N.. (and "next")
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pvesim.faults import Fault, FaultInjector
from pvesim.realtime import RealtimeDriver

log = logging.getLogger("pvesim.control")

PREFIX = "/_sim"


class ControlError(Exception):
    """A control request that cannot be carried out (maps to HTTP 4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _record_dict(record: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if isinstance(record, dict):
        return dict(record)
    as_dict = getattr(record, "_asdict", None)
    if callable(as_dict):
        return dict(as_dict())
    if isinstance(record, (tuple, list)):
        names = ("time", "served_by", "token_id", "method", "path", "status")
        return dict(zip(names, record, strict=False))
    return {"record": repr(record)}


class SimControl:
    """What can be done to a running simulation (thread-safe: the
    Simulator's own lock serialises every change with API calls)."""

    def __init__(
        self,
        sim: Any,
        injector: FaultInjector | None = None,
        driver: RealtimeDriver | None = None,
    ) -> None:
        self.sim = sim
        self.injector = injector
        self.driver = driver

    def _node(self, name: str) -> str:
        if name not in list(self.sim.node_names):
            raise ControlError(404, f"no such node '{name}'")
        return name

    def state(self) -> dict[str, Any]:
        nodes: dict[str, dict[str, Any]] = {}
        with self.sim.lock:
            for name in self.sim.node_names:
                entry: dict[str, Any] = {"reachable": bool(self.sim.node_reachable(name))}
                node = getattr(self.sim, "nodes", {}).get(name)
                for attr in ("powered", "network", "maintenance"):
                    if hasattr(node, attr):
                        entry[attr] = bool(getattr(node, attr))
                nodes[name] = entry
        return {
            "now": float(self.sim.now),
            "speed": self.driver.speed if self.driver else None,
            "paused": self.driver.paused if self.driver else None,
            "nodes": nodes,
        }

    def advance(self, seconds: float) -> float:
        if not seconds >= 0:
            raise ControlError(400, f"advance: seconds {seconds} must be >= 0")
        self.sim.advance(float(seconds))
        return float(self.sim.now)

    def pause(self) -> None:
        if self.driver is None:
            raise ControlError(409, "no real-time clock to pause (stepped mode)")
        self.driver.pause()

    def resume(self) -> None:
        if self.driver is None:
            raise ControlError(409, "no real-time clock to resume (stepped mode)")
        self.driver.resume()

    def set_speed(self, speed: float) -> None:
        if self.driver is None:
            raise ControlError(409, "no real-time clock (stepped mode)")
        try:
            self.driver.speed = float(speed)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc

    def power(self, node: str, on: bool) -> None:
        node = self._node(node)
        (self.sim.power_on if on else self.sim.power_off)(node)

    def network(self, node: str, up: bool) -> None:
        node = self._node(node)
        (self.sim.restore_network if up else self.sim.cut_network)(node)

    def maintenance(self, node: str, on: bool) -> None:
        self.sim.set_maintenance(self._node(node), bool(on))

    def _injector(self) -> FaultInjector:
        if self.injector is None:
            raise ControlError(409, "fault injection is not enabled")
        return self.injector

    def add_fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            fault = Fault.from_dict(spec)
        except (TypeError, ValueError) as exc:
            raise ControlError(400, str(exc)) from exc
        return self._injector().add(fault).to_dict()

    def faults(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self._injector().faults]

    def remove_fault(self, fault_id: int) -> None:
        if not self._injector().remove(fault_id):
            raise ControlError(404, f"no fault with id {fault_id}")

    def clear_faults(self) -> None:
        self._injector().clear()

    def metrics(self) -> dict[str, Any]:
        with self.sim.lock:
            data = self.sim.metrics.to_dict()
        return dict(data)

    def requests(self, since: int = 0) -> dict[str, Any]:
        with self.sim.lock:
            log_entries = list(self.sim.request_log)
        since = max(0, since)
        return {
            "entries": [_record_dict(r) for r in log_entries[since:]],
            "next": len(log_entries),
        }


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise ControlError(400, f"'{key}' must be true or false")


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(400, f"'{key}' must be a number")
    return float(value)


_Action = Callable[[SimControl, re.Match[str], dict[str, Any], dict[str, list[str]]], Any]
_Route = tuple[str, "re.Pattern[str]", _Action]


def _routes() -> list[_Route]:
    def r(method: str, pattern: str, fn: Callable[..., Any]) -> _Route:
        return (method, re.compile(PREFIX + pattern + "$"), fn)

    return [
        r("GET", "/state", lambda c, m, b, q: c.state()),
        r("POST", "/advance", lambda c, m, b, q: {"now": c.advance(_number(b, "seconds"))}),
        r("POST", "/pause", lambda c, m, b, q: c.pause()),
        r("POST", "/resume", lambda c, m, b, q: c.resume()),
        r("POST", "/speed", lambda c, m, b, q: c.set_speed(_number(b, "speed"))),
        r("POST", "/nodes/([^/]+)/power", lambda c, m, b, q: c.power(m[1], _bool(b, "on"))),
        r("POST", "/nodes/([^/]+)/network", lambda c, m, b, q: c.network(m[1], _bool(b, "up"))),
        r(
            "POST",
            "/nodes/([^/]+)/maintenance",
            lambda c, m, b, q: c.maintenance(m[1], _bool(b, "on")),
        ),
        r("GET", "/faults", lambda c, m, b, q: c.faults()),
        r("POST", "/faults", lambda c, m, b, q: c.add_fault(b)),
        r("DELETE", "/faults", lambda c, m, b, q: c.clear_faults()),
        r("DELETE", "/faults/([0-9]+)", lambda c, m, b, q: c.remove_fault(int(m[1]))),
        r("GET", "/metrics", lambda c, m, b, q: c.metrics()),
        r(
            "GET",
            "/requests",
            lambda c, m, b, q: c.requests(int((q.get("since") or ["0"])[0] or 0)),
        ),
    ]


class _ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pvesim-control"
    sys_version = ""
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: %s", format % args)

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            self.close_connection = True
            self._reply(400, {"error": "invalid Content-Length"})
            return
        raw = self.rfile.read(length) if length > 0 else b""
        auth = self.headers.get("authorization", "")
        expected = f"Bearer {self.server.token}"
        if not hmac.compare_digest(auth.encode(), expected.encode()):
            self._reply(401, {"error": "control token missing or wrong"})
            return
        parts = urlsplit(self.path)
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ControlError(400, "request body must be a JSON object")
            query = parse_qs(parts.query)
            allowed: list[str] = []
            for method, pattern, fn in self.server.routes:
                match = pattern.match(parts.path)
                if match is None:
                    continue
                allowed.append(method)
                if method == self.command:
                    self._reply(200, {"data": fn(self.server.control, match, body, query)})
                    return
            if allowed:
                raise ControlError(405, f"{self.command} not allowed on {parts.path}")
            raise ControlError(404, f"no control endpoint {parts.path}")
        except ControlError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except ValueError as exc:
            self._reply(400, {"error": f"bad request: {exc}"})
        except Exception as exc:
            log.exception("control request %s %s failed", self.command, parts.path)
            self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    do_GET = _serve  # noqa: N815 - names fixed by BaseHTTPRequestHandler
    do_POST = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815


class ControlServer(ThreadingHTTPServer):
    """Plain HTTP on 127.0.0.1 (loopback only; the token guards it)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, control: SimControl, token: str, port: int = 0) -> None:
        if not token:
            raise ValueError("control token must not be empty")
        self.control = control
        self.token = token
        self.routes = _routes()
        self._thread: threading.Thread | None = None
        super().__init__(("127.0.0.1", port), _ControlHandler)

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        with contextlib.suppress(OSError):  # no Nagle delay between headers and body
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PREFIX}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="pvesim-control",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


class ControlClient:
    """A small client for the control endpoints (tests, benchmarks, scripts)."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_connection(cls, conn: dict[str, Any]) -> ControlClient:
        return cls(conn["control_url"], conn["control_token"])

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())["data"]
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except ValueError:
                message = ""
            raise ControlError(exc.code, message or str(exc)) from None

    def state(self) -> dict[str, Any]:
        return dict(self.call("GET", "/state"))

    def advance(self, seconds: float) -> float:
        return float(self.call("POST", "/advance", {"seconds": seconds})["now"])

    def power(self, node: str, on: bool) -> None:
        self.call("POST", f"/nodes/{node}/power", {"on": on})

    def network(self, node: str, up: bool) -> None:
        self.call("POST", f"/nodes/{node}/network", {"up": up})

    def maintenance(self, node: str, on: bool) -> None:
        self.call("POST", f"/nodes/{node}/maintenance", {"on": on})

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        return dict(self.call("POST", "/faults", spec))

    def faults(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/faults"))

    def clear_faults(self) -> None:
        self.call("DELETE", "/faults")

    def metrics(self) -> dict[str, Any]:
        return dict(self.call("GET", "/metrics"))

    def requests(self, since: int = 0) -> dict[str, Any]:
        return dict(self.call("GET", f"/requests?since={since}"))
