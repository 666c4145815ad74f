"""What an API handler sees and how it is found: the parameter declarations,
the request context, the error a handler raises, and the route table.

This module is what the handler modules (`pvesim.api_*`) and the dispatcher
(`pvesim.api`) share. It imports neither: each handler module offers a
`register(router)` that adds its routes, and `pvesim.api` builds the table by
calling them, so what is served is written down in one place and nothing
depends on the order modules happen to be imported in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pvesim.protocol import ApiRequest
from pvesim.state import Token

if TYPE_CHECKING:
    from pvesim.cluster import Simulator


class ApiError(Exception):
    """A refusal by the API layer itself (auth, routing, parameters,
    permissions); `status`, message and `errors` become the answer."""

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
    """One call as a handler sees it: the simulator (its lock held), the
    request, the authenticated token, the validated parameters and the node
    whose API serves the call."""

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


class Router:
    """The route table, in the order routes were added."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self, method: str, template: str, handler: Handler, params: dict[str, P] | None = None
    ) -> None:
        """Serve `method template` with `handler`. Path placeholders are
        parameters too: `{node}` and `{vmid}` with PVE's formats, any other
        a required string."""
        p = dict(params or {})
        for name in re.findall(r"\{(\w+)\}", template):
            p.setdefault(
                name, NODE if name == "node" else VMID if name == "vmid" else P(optional=False)
            )
        parts = tuple(template.strip("/").split("/"))
        self.routes.append(Route(method, template, handler, p, parts))

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        """The route serving `method path` and the placeholder values."""
        parts = tuple(p for p in path.strip("/").split("/") if p != "") if path.strip("/") else ()
        for r in self.routes:
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
            if ok and r.method == method:
                return r, vals
        return None, {}
