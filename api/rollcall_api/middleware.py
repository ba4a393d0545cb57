"""Pure ASGI middleware: request ids, access logs and metrics; the request body size limit.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses (SSE) pass through untouched and the
body limit applies to the bytes as they arrive, before anything parses them.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollcall_api.errors import STATUS_CODES, ErrorBody, ErrorInfo
from rollcall_api.logs import request_id_var
from rollcall_api.looplag import LAG_BUCKETS

access_log = logging.getLogger("rollcall_api.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """Fresh request ids: 32 hex digits, a random half per process and a counter.

    Unique across replicas and restarts as a uuid4 is (64 random bits per process), without a
    getrandom call per request (2 % of the event loop's samples under a submission burst).
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body parsing re-raises it as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "invalid Content-Length")
                    return
                if declared > self.limit:
                    await _send_error(send, 413, f"request body larger than {self.limit} bytes")
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_error(send, 413, str(exc.detail))


async def _send_error(send: Send, status: int, message: str) -> None:
    """The shared error body, sent before any route (or FastAPI) has seen the request."""
    info = ErrorInfo(
        code=STATUS_CODES.get(status, "error"), message=message, request_id=request_id_var.get()
    )
    data = json.dumps(
        ErrorBody(error=info).model_dump(by_alias=True, exclude_none=True), separators=(",", ":")
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Metrics:
    """Per-app registry, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rollcall_api_requests",
            "HTTP requests served.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rollcall_api_request_seconds",
            "Time to the response's first byte.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.jobs_created = Counter(
            "rollcall_api_jobs_created",
            "RecognitionJobs created.",
            ["mode"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "rollcall_api_event_loop_lag_seconds",
            "How late a periodic timer fires: time the event loop could not answer anything.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_own = Histogram(
            "rollcall_api_event_loop_lag_own_seconds",
            "The same lag less the time the loop thread waited for a CPU (Linux run delay): "
            "the share the API's own work causes.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "rollcall_api_idempotent_replays",
            "POSTs answered with the job of an earlier POST.",
            registry=self.registry,
        )
        self.limited = Counter(
            "rollcall_api_limited",
            "Requests refused with 429 by a per-school limit.",
            ["limit"],
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "rollcall_api_event_streams",
            "Open server-sent event streams.",
            registry=self.registry,
        )
        self.watches = Gauge(
            "rollcall_api_watches",
            "Open apiserver watches (one per namespace with a stream, shared by its streams).",
            registry=self.registry,
        )


class RequestContextMiddleware:
    """Request id in/out (X-Request-ID), one structured access-log line, request metrics.

    ``/healthz`` passes straight through: a liveness probe must not wait on anything shared (the
    log handler's lock, the metric locks a scrape holds), so it answers while a school floods.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.new_request_id = RequestIds()
        # (method, route, status) -> its counter and (method, route) histogram children: a
        # metric's labels() takes a lock and builds the key on every call.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            series = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
            self._series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(candidate):
                    rid = candidate
                break
        rid = rid or self.new_request_id()
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        first_byte: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
                first_byte = time.perf_counter() - start
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = _route_template(scope)
            method = scope.get("method", "")
            self._observe(
                method,
                route,
                status,
                first_byte if first_byte is not None else time.perf_counter() - start,
            )
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    "school": scope.get("state", {}).get("school"),
                },
            )
            request_id_var.reset(token)


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    # Unmatched paths share one label: raw paths would give Prometheus unbounded cardinality.
    return str(path) if path else "unmatched"
