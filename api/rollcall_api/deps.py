"""Dependencies declared once as ``Annotated`` aliases and reused in route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rollcall_api.auth import Caller, KeyStore
from rollcall_api.errors import ApiError
from rollcall_api.kube import RecognitionJobs
from rollcall_api.middleware import Metrics
from rollcall_api.settings import Settings
from rollcall_api.store import Store

_bearer = HTTPBearer(auto_error=False, description="A per-school API key.")


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app``; by default the cached env ones).

    Read from app state, not through a ``dependency_overrides`` entry: FastAPI re-analyses an
    override's signature on every request (~1 ms each, measured). Tests override this function.
    """
    settings: Settings = request.app.state.settings
    return settings


async def get_jobs(request: Request) -> RecognitionJobs:
    jobs: RecognitionJobs = request.app.state.jobs
    return jobs


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def current_caller(
    request: Request,
    keys: Annotated[KeyStore, Depends(get_keys)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The school behind the bearer key; 401 (same answer) for a missing or unknown key."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing API key (Authorization: Bearer <key>)", headers=challenge)
    caller = keys.authenticate(credentials.credentials)
    if caller is None:
        raise ApiError(401, "unknown API key", headers=challenge)
    request.state.school = caller.school
    return caller


SettingsDep = Annotated[Settings, Depends(app_settings)]
JobsDep = Annotated[RecognitionJobs, Depends(get_jobs)]
StoreDep = Annotated[Store, Depends(get_store)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CallerDep = Annotated[Caller, Depends(current_caller)]
