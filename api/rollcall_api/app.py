"""The app factory. The lifespan owns the apiserver and Redis clients and background probes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI
from kubernetes_asyncio import client, config
from prometheus_client import start_http_server

from rollcall_api import deps, looplag
from rollcall_api.auth import KeyStore
from rollcall_api.erasure import Eraser
from rollcall_api.errors import install_error_handlers
from rollcall_api.kube import KubeEvents, RecognitionJobs
from rollcall_api.limits import RateLimiter, Slots
from rollcall_api.middleware import BodyLimitMiddleware, Metrics, RequestContextMiddleware
from rollcall_api.routes import classes, enrollments, health, jobs
from rollcall_api.settings import Settings, get_settings
from rollcall_api.store import Store
from rollcall_api.watches import WatchHub
from rollcall_contract import redisclient
from rollcall_contract.kubeclient import read_env_once

log = logging.getLogger("rollcall_api")

DESCRIPTION = """
Submit face-recognition attendance jobs for a class; they run as GPU Jobs on Kubernetes, never in
this process. Authenticate with your school's API key: `Authorization: Bearer <key>`.

Errors always have the body `{"error": {"code", "message", "requestId", "details"}}`.
"""


async def kube_client(settings: Settings) -> client.ApiClient:
    """An ApiClient from the configured kubeconfig, else the pod's ServiceAccount."""
    configuration = client.Configuration()
    if settings.kubeconfig is not None:
        await config.load_kube_config(
            config_file=str(settings.kubeconfig),
            context=settings.kube_context,
            client_configuration=configuration,
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    api_client = client.ApiClient(configuration=configuration)
    read_env_once(api_client)  # no proxy/netrc lookup in a thread per call
    return api_client


async def _reload_keys(keys: KeyStore, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await keys.reload()


async def _probe_loop_lag(metrics: Metrics, every: float) -> None:
    """Export how late a timer fires (a blocked loop shows here before anywhere else), and how
    much of that is the API's own work rather than a wait for a CPU (``looplag``)."""
    loop = asyncio.get_running_loop()
    run_delay = looplag.RunDelay()  # opened here, on the loop thread it reports
    try:
        delay0 = run_delay.read()
        while True:
            start = loop.time()
            await asyncio.sleep(every)
            lag, delay1 = max(0.0, loop.time() - start - every), run_delay.read()
            waited = None if delay0 is None or delay1 is None else delay1 - delay0
            metrics.loop_lag.observe(lag)
            metrics.loop_lag_own.observe(looplag.own_share(lag, waited))
            delay0 = delay1
    finally:
        run_delay.close()


def _watch_gauges(metrics: Metrics) -> Callable[[WatchHub], None]:
    def update(hub: WatchHub) -> None:
        metrics.watches.set(hub.watches())
        metrics.event_streams.set(hub.streams())

    return update


@contextlib.contextmanager
def _metrics_server(metrics: Metrics, host: str, port: int) -> Iterator[None]:
    """Prometheus metrics on their own port (a thread): kept off the public API port."""
    if not port:
        yield
        return
    httpd, thread = start_http_server(port, host, registry=metrics.registry)
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def document_bearer_scheme(app: FastAPI) -> None:
    """Name the bearer key in the OpenAPI document for every route that demands it.

    The key is read by plain code (``deps.authenticate``), not by a FastAPI security dependency
    solved on every request, so FastAPI no longer writes the scheme into the document itself.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["HTTPBearer"] = deps.BEARER_SCHEME
            for path, operations in schema["paths"].items():
                if path.startswith(deps.AUTHENTICATED_PREFIX):
                    for operation in operations.values():
                        operation["security"] = [{"HTTPBearer": []}]
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api_client = await kube_client(settings)
        timeouts: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 3}
        # Two pools: the store's reads and claims are resent after a lost connection (a restarted
        # server, a failover); the eraser's writes are not (see rollcall_contract.redisclient).
        redis = redisclient.async_client(
            settings.redis_url, settings.redis_ca_file, resend=True, **timeouts
        )
        erase_redis = redisclient.async_client(
            settings.redis_url, settings.redis_ca_file, **timeouts
        )
        keys = KeyStore(settings.keys_file)
        await keys.reload()
        app.state.jobs = RecognitionJobs(api_client, settings.kube_timeout_seconds)
        app.state.kube_events = KubeEvents(api_client, settings.kube_timeout_seconds)
        app.state.store = Store(redis)
        app.state.eraser = Eraser(
            erase_redis, settings.erase_replicas, settings.erase_replica_timeout_ms
        )
        app.state.keys = keys
        app.state.hub = hub = WatchHub(
            app.state.jobs, settings.watch_linger_seconds, _watch_gauges(metrics)
        )
        background = []
        if settings.keys_reload_seconds > 0:
            background.append(asyncio.create_task(_reload_keys(keys, settings.keys_reload_seconds)))
        if settings.loop_lag_interval_seconds > 0:
            background.append(
                asyncio.create_task(_probe_loop_lag(metrics, settings.loop_lag_interval_seconds))
            )
        # Objects made at start-up live as long as the process: keep the cyclic GC from rescanning
        # them, so a gen-2 collection under load stays short (it showed as 150+ ms loop stalls).
        gc.freeze()
        try:
            with _metrics_server(metrics, settings.host, settings.metrics_port):
                yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await hub.close()
            await api_client.close()
            await redis.aclose()
            await erase_redis.aclose()

    app = FastAPI(
        title="rollcall",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Off by default: the schema maps the whole surface for anyone who can reach the port.
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.limiter = RateLimiter(settings.submissions_per_minute, settings.submissions_burst)
    app.state.stream_slots = Slots(settings.streams_per_key)
    install_error_handlers(app)
    document_bearer_scheme(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(enrollments.router)
    app.include_router(classes.router)
    # Outermost first: the request id exists before the body limit can refuse a request.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
