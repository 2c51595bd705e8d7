"""The service's Prometheus metrics (served on ``/metrics`` with the process's own)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("sonic_http_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
LATENCY = Histogram("sonic_http_request_seconds", "Time to the response's headers",
                    ["method", "route"])
SUBMITTED = Counter("sonic_http_jobs_submitted_total", "Jobs produced to Kafka", ["tenant"])
REFUSED = Counter("sonic_http_uploads_refused_total", "Uploads refused, by error code",
                  ["code"])
STREAMS = Gauge("sonic_http_event_streams", "Server-Sent Event streams open")


class RequestMetrics:
    """ASGI middleware: count and time each request by its route template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                route = _route(scope)
                LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            REQUESTS.labels(scope["method"], _route(scope), str(status["code"])).inc()


def _route(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")
