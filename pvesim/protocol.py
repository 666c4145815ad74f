"""The seam between the simulated PVE API and the ways requests reach it.

The API itself (`pvesim.api`) is a plain function of an `ApiRequest`. The
HTTPS server, the in-process `requests` transport and the fault injector all
speak only these two types, so every path a client can take runs the very
same handlers.

The two types the simulator and the API exchange live here too, so that
neither has to import the other for them: `SimError`, the refusal an
operation of the simulated cluster raises and the API turns into an answer,
and `RequestRecord`, one line of the request log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ApiRequest:
    """One API call as PVE's HTTP server would parse it.

    `path` is below `/api2/json` (for example `/cluster/resources`);
    `params` merges the query string and the form or JSON body, values as
    strings (PVE parses and validates them per its schema); `headers` has
    lower-case names. `served_by` is the node whose API received the call:
    the agent on each node talks to its own local API, and the simulator
    records who asked for what.
    """

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    served_by: str = ""


@dataclass(frozen=True)
class ApiResponse:
    """The answer PVE would send: status, HTTP reason phrase (PVE puts its
    error message there too) and the raw body bytes (normally
    `{"data": ...}` JSON)."""

    status: int
    body: bytes
    reason: str = "OK"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


class ApiHandler(Protocol):
    def handle(self, request: ApiRequest) -> ApiResponse: ...


class SimError(Exception):
    """An operation PVE would refuse; `status` and message become the API
    answer (500 unless said otherwise)."""

    def __init__(
        self, message: str, status: int = 500, errors: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class RequestRecord:
    """One API call as the simulator logged it: when, which node's API
    served it, which token asked, and the answer's status."""

    time: float
    served_by: str
    token_id: str | None
    method: str
    path: str
    status: int
