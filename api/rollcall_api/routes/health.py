"""Probes and metrics; unauthenticated, never touching job data."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rollcall_api.deps import JobsDep, KeysDep, MetricsDep, StoreDep
from rollcall_api.errors import ApiError
from rollcall_api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the event loop answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
    summary="Readiness: the apiserver and Redis answer, and API keys are loaded",
)
async def readyz(response: Response, jobs: JobsDep, store: StoreDep, keys: KeysDep) -> Health:
    async def check(probe: asyncio.Future[None] | asyncio.Task[None]) -> str:
        try:
            await asyncio.wait_for(probe, timeout=3)
        except (ApiError, TimeoutError):
            return "unavailable"
        return "ok"

    kube, redis = await asyncio.gather(
        check(asyncio.ensure_future(jobs.ping())), check(asyncio.ensure_future(store.ping()))
    )
    checks = {"apiserver": kube, "redis": redis, "keys": "ok" if keys.loaded else "not loaded"}
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = 503
    return Health(status="ok" if ok else "unavailable", checks=checks)


@router.get("/metrics", include_in_schema=False)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
