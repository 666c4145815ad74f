"""The PVE API as the simulator serves it: routing, auth, parameter checks,
error shapes, and the proxying rule (a call about another node goes through
that node, so an unreachable node answers 596).

Handlers live in one module per area (`pvesim.api_cluster`, `api_ha`,
`api_nodes`, `api_guests`, and `api_actions` for migrations); each adds its
routes in a `register(router)` that `build_routes()` calls, so the table is
built explicitly here and no handler module imports this one. `ROUTES` lists
every implemented (method, path template) pair; `routes()` gives them with
their parameter declarations.

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
from typing import TYPE_CHECKING, Any

from pvesim import api_actions, api_cluster, api_guests, api_ha, api_nodes
from pvesim.protocol import ApiRequest, ApiResponse, RequestRecord, SimError
from pvesim.routing import ApiError, Ctx, Route, Router
from pvesim.state import Token

if TYPE_CHECKING:
    from pvesim.cluster import Simulator


def build_routes() -> Router:
    """The route table: every endpoint the simulator serves, by area."""
    router = Router()
    for area in (api_cluster, api_ha, api_nodes, api_guests, api_actions):
        area.register(router)
    return router


_ROUTER = build_routes()

# every implemented (method, path template) pair
ROUTES: list[tuple[str, str]] = [(r.method, r.template) for r in _ROUTER]


def routes() -> list[Route]:
    """The routes with their parameter declarations (the schema conformance
    test walks them)."""
    return list(_ROUTER)


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
        rt, vals = _ROUTER.match(method, path)
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
