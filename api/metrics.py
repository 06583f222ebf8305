"""Prometheus metrics of the API, in a registry of the app's own.

Requests are labelled with the route's template (``/sessions/{session_id}``), never the
raw path, so a scan of random URLs cannot blow up the number of series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    """The API's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "scorer_api_requests_total",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "scorer_api_request_seconds",
            "Time from request to the end of the response, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "scorer_api_errors_total",
            "Responses with a 5xx status, by route template",
            ["route"],
            registry=self.registry,
        )
        self.rows_scored = Counter(
            "scorer_api_rows_scored_total",
            "Session rows scored by /predict and /predict/batch",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "scorer_api_model_info",
            "The model version being served (value 1)",
            ["version"],
            registry=self.registry,
        )
        self.model_reloads = Counter(
            "scorer_api_model_reloads_total",
            "Attempts to load a newly deployed artifact, by result (loaded or failed)",
            ["result"],
            registry=self.registry,
        )

    def serve_model(self, version: str) -> None:
        """Mark version as the one being served."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)


class MetricsMiddleware:
    """Count and time every HTTP request (a plain ASGI middleware: no per-request task)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            if status >= 500:
                self.metrics.errors.labels(route).inc()


class BodyLimitMiddleware:
    """Refuse request bodies above a size limit with 413, before they are parsed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, "content-length: not a number")
                return
            if size > self.max_bytes:
                await _reply(send, 413, self._too_large())
                return
            await self.app(scope, receive, send)
            return
        # No declared length (a chunked body): read it here, up to the limit, and hand
        # the app a replay of it.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await _reply(send, 413, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], then=receive), send)

    def _too_large(self) -> str:
        return f"body: larger than the limit of {self.max_bytes} bytes"


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Any:
    """Return a receive callable that yields messages, then defers to ``then``."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        message: dict[str, Any] = await then()
        return message

    return receive


async def _reply(send: Any, status: int, detail: str) -> None:
    import orjson

    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
