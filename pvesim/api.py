"""The PVE API as the simulator serves it: routing, auth, parameter checks,
error shapes, and the proxying rule (a call about another node goes through
that node, so an unreachable node answers 596).

Handlers live in `pvesim.api_views` (reads) and `pvesim.api_actions`
(migrations). `ROUTES` lists every implemented (method, path template) pair;
the schema conformance test walks it.

Error shapes, as PVE's HTTP server sends them:
- 401 `{"data": null}` — reason "No ticket" (no credentials) or
  "authentication failure" (unknown token / wrong secret);
- 403 `{"data": null}` — reason "Permission check failed (/vms/100, VM.Migrate)";
- 400 `{"errors": {param: msg}, "data": null}` — reason "Parameter verification failed.";
- 500 `{"data": null}` — the error message as reason;
- 501 `{"data": null}` — "Method 'GET /foo' not implemented";
- 596 `{"data": null}` — the target node cannot be reached through the proxy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pvesim.protocol import ApiRequest, ApiResponse, RequestRecord, SimError
from pvesim.state import Token

if TYPE_CHECKING:
    from pvesim.cluster import Simulator


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass(frozen=True)
class P:
    """One parameter as the schema declares it."""

    type: str = "string"  # string | integer | boolean | number
    optional: bool = True
    enum: tuple[str, ...] | None = None
    fmt: str | None = None  # pve-node | pve-vmid
    minimum: int | None = None


NODE = P("string", False, fmt="pve-node")
VMID = P("integer", False, fmt="pve-vmid")


@dataclass
class Ctx:
    sim: Simulator
    req: ApiRequest
    token: Token
    params: dict[str, Any]
    served_by: str

    def need(self, path: str, priv: str) -> None:
        if not self.token.has(path, priv):
            raise ApiError(403, f"Permission check failed ({path}, {priv})")

    def can(self, path: str, priv: str) -> bool:
        return self.token.has(path, priv)

    def sees(self, node: str) -> bool:
        """Whether the serving node can reach `node` (a cut-off node sees
        only itself; others see every reachable node)."""
        sim = self.sim
        me = sim.nodes.get(self.served_by)
        if me is None or me.reachable:
            return sim.nodes[node].reachable
        return node == self.served_by


Handler = Callable[[Ctx], Any]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    params: dict[str, P]
    parts: tuple[str, ...]


_routes: list[Route] = []


def route(
    method: str, template: str, params: dict[str, P] | None = None
) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        p = dict(params or {})
        for name in re.findall(r"\{(\w+)\}", template):
            p.setdefault(
                name, NODE if name == "node" else VMID if name == "vmid" else P(optional=False)
            )
        _routes.append(Route(method, template, fn, p, tuple(template.strip("/").split("/"))))
        return fn

    return deco


def routes() -> list[Route]:
    # handler modules register themselves on import
    import pvesim.api_actions  # noqa: PLC0415
    import pvesim.api_views  # noqa: F401, PLC0415

    return _routes


class _RouteTable:
    """`ROUTES` behaves as a list of (method, template) pairs, filled lazily
    so the handler modules can import this one."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([(r.method, r.template) for r in routes()])

    def __len__(self) -> int:
        return len(routes())

    def __contains__(self, item: object) -> bool:
        return item in [(r.method, r.template) for r in routes()]


ROUTES = _RouteTable()


def _match(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    parts = tuple(p for p in path.strip("/").split("/") if p != "") if path.strip("/") else ()
    other_method = False
    for r in routes():
        if len(r.parts) != len(parts):
            continue
        vals: dict[str, str] = {}
        ok = True
        for tp, pp in zip(r.parts, parts, strict=True):
            if tp.startswith("{"):
                vals[tp[1:-1]] = pp
            elif tp != pp:
                ok = False
                break
        if not ok:
            continue
        if r.method == method:
            return r, vals, False
        other_method = True
    return None, {}, other_method


_BOOL_TRUE = {"1", "on", "yes", "true"}
_BOOL_FALSE = {"0", "off", "no", "false"}
_NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")


def _validate(route_: Route, raw: dict[str, str]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for k in raw:
        if k not in route_.params:
            errors[k] = (
                "property is not defined in schema and the schema does not allow "
                "additional properties"
            )
    for name, spec in route_.params.items():
        if name not in raw or raw[name] == "":
            if not spec.optional:
                errors[name] = "property is missing and it is not optional"
            continue
        v = str(raw[name])
        if spec.type == "boolean":
            lv = v.lower()
            if lv in _BOOL_TRUE:
                out[name] = True
            elif lv in _BOOL_FALSE:
                out[name] = False
            else:
                errors[name] = f"type check ('boolean') failed - got '{v}'"
            continue
        if spec.type == "integer":
            if not re.fullmatch(r"[+-]?\d+", v):
                errors[name] = f"type check ('integer') failed - got '{v}'"
                continue
            iv = int(v)
            if spec.fmt == "pve-vmid" and not 100 <= iv <= 999_999_999:
                errors[name] = "invalid format - value does not look like a valid VM ID\n"
                continue
            if spec.minimum is not None and iv < spec.minimum:
                errors[name] = f"value must have a minimum value of {spec.minimum}"
                continue
            out[name] = iv
            continue
        if spec.type == "number":
            try:
                out[name] = float(v)
            except ValueError:
                errors[name] = f"type check ('number') failed - got '{v}'"
            continue
        if spec.enum is not None and v not in spec.enum:
            errors[name] = (
                f"value '{v}' does not have a value in the enumeration '{', '.join(spec.enum)}'"
            )
            continue
        if spec.fmt == "pve-node" and not _NODE_RE.match(v):
            errors[name] = "invalid format - value does not look like a valid node name\n"
            continue
        out[name] = v
    if errors:
        raise ApiError(400, "Parameter verification failed.", errors)
    return out


_TOKEN_RE = re.compile(r"^PVEAPIToken=(?P<id>[^=\s]+@[^=!\s]+![^=\s]+)[=:](?P<secret>\S+)$")


def _authenticate(sim: Simulator, headers: dict[str, str]) -> Token:
    auth = headers.get("authorization", "").strip()
    if not auth:
        raise ApiError(401, "No ticket")
    m = _TOKEN_RE.match(auth)
    if m is None:
        raise ApiError(401, "authentication failure")
    tok = sim.token_objs.get(m.group("id"))
    if tok is None or tok.secret != m.group("secret"):
        raise ApiError(401, "authentication failure")
    return tok


def _response(status: int, body: dict[str, Any], reason: str) -> ApiResponse:
    return ApiResponse(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        reason=reason.replace("\n", " ").strip(),
        headers={"content-type": "application/json;charset=UTF-8"},
    )


def dispatch(sim: Simulator, req: ApiRequest) -> ApiResponse:
    """Answer one request (the caller holds `sim.lock`)."""
    method = req.method.upper()
    path = req.path
    if path.startswith("/api2/json"):
        path = path[len("/api2/json") :]
    path = "/" + path.strip("/")
    served_by = req.served_by or sim.node_names[0]
    token_id: str | None = None
    template = path
    try:
        # pveproxy authenticates before it looks the handler up
        token = _authenticate(sim, req.headers)
        token_id = token.token_id
        rt, vals, _other = _match(method, path)
        if rt is None:
            raise ApiError(501, f"Method '{method} {path}' not implemented")
        template = rt.template
        me = sim.nodes.get(served_by)
        if me is not None and not me.powered:
            raise ApiError(595, "Connection refused")
        raw = dict(req.params)
        for k, v in vals.items():
            raw[k] = v
        params = _validate(rt, raw)
        node = params.get("node")
        if node is not None:
            if node not in sim.nodes:
                raise ApiError(
                    500,
                    f"hostname lookup '{node}' failed - failed to get address info for: "
                    f"{node}: Name or service not known",
                )
            if node != served_by and not (
                sim.nodes[node].reachable and (me is None or me.reachable)
            ):
                raise ApiError(596, "Connection timed out")
        ctx = Ctx(sim, req, token, params, served_by)
        data = rt.handler(ctx)
        resp = _response(200, {"data": data}, "OK")
    except ApiError as exc:
        body: dict[str, Any] = {"data": None}
        if exc.errors:
            body = {"errors": exc.errors, "data": None}
        resp = _response(exc.status, body, exc.message)
    except SimError as exc:
        err_body: dict[str, Any] = {"data": None}
        if exc.errors:
            err_body = {"errors": exc.errors, "data": None}
        resp = _response(exc.status, err_body, exc.message)
    rec = RequestRecord(sim.now, served_by, token_id, method, path, resp.status)
    sim.log_request(rec, template)
    return resp
