"""How an HTTP request becomes an `ApiRequest`, and an in-process `requests`
transport that skips the sockets.

`parse_api_request` is shared by the HTTPS server and the in-process
adapter, so both read a request the way pveproxy does: the path below
`/api2/json`, query-string parameters merged with a form-urlencoded or JSON
body, repeated keys joined with NUL (how PVE passes list parameters on).

`attach(api, handler, served_by)` mounts `InProcessAdapter` on a proxmoxer
`ProxmoxAPI` session. proxmoxer's own code builds the request, `requests`
prepares it (auth header, form encoding), the adapter hands it to the same
handler the HTTPS server uses, and proxmoxer parses the JSON answer — only
the socket is missing. A node that is unreachable, or a timeout fault, raises
the same `requests` exceptions a dead socket would.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from pvesim.faults import (
    SimulatedResetError,
    SimulatedTimeoutError,
    pve_error,
    virtual_latency,
)
from pvesim.protocol import ApiHandler, ApiRequest, ApiResponse

API_PREFIX = "/api2/json"


class BadRequestError(ValueError):
    """The request cannot be read at all (pveproxy answers 400 or 501)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _merge(params: dict[str, str], key: str, value: str) -> None:
    params[key] = f"{params[key]}\0{value}" if key in params else value


def _json_scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    if value is None:
        return ""
    raise BadRequestError(400, f"parameter '{key}': JSON value must be a string, number or boolean")


def parse_api_request(
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    served_by: str,
) -> ApiRequest:
    """Turn an HTTP request (method, request target with query string,
    lower-case headers, raw body) into the `ApiRequest` the handlers see."""
    parts = urlsplit(target)
    raw_path = unquote(parts.path)
    if raw_path != API_PREFIX and not raw_path.startswith(API_PREFIX + "/"):
        if raw_path.startswith("/api2/") and raw_path.split("/")[2] in ("extjs", "html"):
            raise BadRequestError(501, f"format '{raw_path.split('/')[2]}' not supported")
        raise BadRequestError(404, f"Not found: {raw_path}")
    path = raw_path[len(API_PREFIX) :] or "/"
    while len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        _merge(params, key, value)
    if body:
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise BadRequestError(400, f"unable to parse JSON body: {exc}") from exc
            if not isinstance(doc, dict):
                raise BadRequestError(400, "JSON body must be an object")
            for key, value in doc.items():
                if isinstance(value, list):
                    for item in value:
                        _merge(params, key, _json_scalar(key, item))
                else:
                    _merge(params, key, _json_scalar(key, value))
        elif ctype in ("application/x-www-form-urlencoded", ""):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequestError(400, "request body is not UTF-8") from exc
            for key, value in parse_qsl(text, keep_blank_values=True):
                _merge(params, key, value)
        else:
            raise BadRequestError(415, f"unsupported content type '{ctype}'")
    return ApiRequest(
        method=method.upper(),
        path=path,
        params=params,
        headers={k.lower(): v for k, v in headers.items()},
        served_by=served_by,
    )


def _read_timeout(timeout: Any) -> float | None:
    if isinstance(timeout, tuple):
        timeout = timeout[1] if len(timeout) > 1 else timeout[0]
    if timeout is None:
        return None
    try:
        return float(timeout)
    except (TypeError, ValueError):
        return None


def _connect_timeout(timeout: Any) -> float | None:
    if isinstance(timeout, tuple):
        timeout = timeout[0]
    return _read_timeout(timeout)


@dataclass
class _Latency:
    total: float = 0.0

    def add(self, seconds: float) -> None:
        self.total += seconds


class InProcessAdapter(BaseAdapter):
    """A `requests` transport adapter that answers from an `ApiHandler`.

    `sleep`, when given, is called with every virtual delay the client
    would have waited (latency faults, timeouts, unreachable nodes) — pass a
    fake clock's sleep so the agent's notion of time moves as it would.
    `virtual_wait` accumulates the same delays for inspection.
    """

    def __init__(
        self,
        handler: ApiHandler,
        served_by: str,
        sleep: Callable[[float], None] | None = None,
        reachable: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.served_by = served_by
        self.sleep = sleep
        self.reachable = reachable
        self.virtual_wait = 0.0

    def _wait(self, seconds: float) -> None:
        self.virtual_wait += seconds
        if self.sleep is not None and seconds > 0:
            self.sleep(seconds)

    def _reachable(self) -> bool:
        probe = self.reachable or getattr(self.handler, "node_reachable", None)
        return True if probe is None else bool(probe(self.served_by))

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        if not self._reachable():
            wait = _connect_timeout(timeout)
            self._wait(wait or 0.0)
            raise requests.exceptions.ConnectTimeout(
                f"node {self.served_by} unreachable (connect timeout)", request=request
            )
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            raise TypeError("InProcessAdapter: streaming request bodies are not supported")
        headers = {k.lower(): v for k, v in request.headers.items()}
        method = request.method or "GET"
        url = request.url or ""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            api_request = parse_api_request(method, target, headers, body, self.served_by)
        except BadRequestError as exc:
            return self._build(request, _plain_error(exc.status, str(exc)), 0.0)
        latency = _Latency()
        read_timeout = _read_timeout(timeout)
        try:
            with virtual_latency(latency.add):
                response = self.handler.handle(api_request)
        except SimulatedResetError:
            raise requests.exceptions.ConnectionError(
                f"connection to {self.served_by} reset by peer ({method} {api_request.path})",
                request=request,
            ) from None
        except SimulatedTimeoutError as exc:
            self._wait(read_timeout if read_timeout is not None else exc.hold)
            raise requests.exceptions.ReadTimeout(
                f"read timeout from {self.served_by} ({method} {api_request.path})",
                request=request,
            ) from None
        if read_timeout is not None and latency.total > read_timeout:
            self._wait(read_timeout)
            raise requests.exceptions.ReadTimeout(
                f"read timeout from {self.served_by} after {read_timeout:g} s "
                f"({method} {api_request.path})",
                request=request,
            )
        self._wait(latency.total)
        return self._build(request, response, latency.total)

    def _build(
        self, request: requests.PreparedRequest, api: ApiResponse, elapsed: float
    ) -> requests.Response:
        resp = requests.Response()
        resp.status_code = api.status
        resp.reason = api.reason
        headers = {k.lower(): v for k, v in api.headers.items()}
        headers["content-length"] = str(len(api.body))
        resp.headers = CaseInsensitiveDict(headers)
        resp._content = api.body
        resp._content_consumed = True  # type: ignore[attr-defined]
        resp.encoding = requests.utils.get_encoding_from_headers(resp.headers)
        resp.url = request.url or ""
        resp.request = request
        resp.connection = self  # type: ignore[assignment]
        resp.elapsed = dt.timedelta(seconds=elapsed)
        return resp

    def close(self) -> None:
        """Nothing to release: there is no socket."""


def _plain_error(status: int, message: str) -> ApiResponse:
    return pve_error(status, message)


def attach(
    proxmox_api: Any,
    handler: ApiHandler,
    served_by: str,
    sleep: Callable[[float], None] | None = None,
    reachable: Callable[[str], bool] | None = None,
) -> InProcessAdapter:
    """Route every request of a proxmoxer `ProxmoxAPI` to `handler`, as if
    sent to node `served_by`'s API. Returns the mounted adapter.

    Whether `served_by` answers at all is `reachable(served_by)` if given,
    else the handler's own `node_reachable` (powered and networked)."""
    store = getattr(proxmox_api, "_store", None)
    if not isinstance(store, dict) or "session" not in store:
        raise TypeError("attach(): expected a proxmoxer ProxmoxAPI (with _store['session'])")
    session = store["session"]
    adapter = InProcessAdapter(handler, served_by, sleep=sleep, reachable=reachable)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return adapter
