"""Probes; unauthenticated, never touching job data. ``/healthz`` touches nothing shared (no
apiserver, no Redis, no lock), so it answers while a school floods the API. Metrics are served on
their own port (``metrics_port``), never here."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from rollcall_api.deps import JobsDep, KeysDep, StoreDep
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
