"""Who asked what of the simulated API, and what it answered.

Every call the API serves is appended here (time, serving node, token,
method, path, status) and counted in the metrics by route template, so
tests can assert on the agent's traffic and benchmarks can report requests
per cycle without touching the client.
"""

from __future__ import annotations

from pvesim.metrics import Metrics
from pvesim.protocol import RequestRecord


class RequestLog:
    def __init__(self, metrics: Metrics) -> None:
        self.records: list[RequestRecord] = []
        self._metrics = metrics

    def add(self, rec: RequestRecord, template: str) -> None:
        self.records.append(rec)
        self._metrics.api_request(rec.method, template, rec.status)
