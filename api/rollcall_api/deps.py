"""Dependencies declared once as ``Annotated`` aliases and reused in route signatures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rollcall_api.auth import Caller, KeyStore
from rollcall_api.erasure import Eraser
from rollcall_api.errors import ApiError
from rollcall_api.kube import KubeEvents, RecognitionJobs
from rollcall_api.limits import RateLimiter, Slots
from rollcall_api.middleware import Metrics
from rollcall_api.settings import Settings
from rollcall_api.store import Store
from rollcall_api.watches import WatchHub

T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="A per-school API key.")


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app``; by default the cached env ones).

    Read from app state, not through a ``dependency_overrides`` entry: FastAPI re-analyses an
    override's signature on every request (~1 ms each, measured). Tests override this function.
    """
    settings: Settings = request.app.state.settings
    return settings


def _from_state(attr: str, kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency returning ``app.state.<attr>`` (set up once by the app's lifespan)."""

    async def get(request: Request) -> T:
        value = getattr(request.app.state, attr)
        assert isinstance(value, kind)
        return value

    get.__name__ = f"get_{attr}"
    return get


get_jobs = _from_state("jobs", RecognitionJobs)
get_store = _from_state("store", Store)
get_keys = _from_state("keys", KeyStore)
get_metrics = _from_state("metrics", Metrics)
get_hub = _from_state("hub", WatchHub)
get_stream_slots = _from_state("stream_slots", Slots)
get_eraser = _from_state("eraser", Eraser)
get_kube_events = _from_state("kube_events", KubeEvents)


@dataclass(frozen=True)
class Submitting:
    """What a submission reads from app state, as one dependency, not five.

    FastAPI solves every dependency on every request; a trivial one costs tens of microseconds of
    the event loop (a toy route with 7 took 0.5-0.7 ms more than with 1, at load 13), and the
    submit routes are the API's busiest.
    """

    settings: Settings
    jobs: RecognitionJobs
    store: Store
    metrics: Metrics
    limiter: RateLimiter


async def submitting(request: Request) -> Submitting:
    state = request.app.state
    return Submitting(state.settings, state.jobs, state.store, state.metrics, state.limiter)


async def current_caller(
    request: Request,
    keys: Annotated[KeyStore, Depends(get_keys)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The school behind the bearer key; 401 (same answer) for a missing or unknown key, 503
    while the key file is unusable (every key is refused then: see ``KeyStore``)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing API key (Authorization: Bearer <key>)", headers=challenge)
    if not keys.loaded:
        raise ApiError(
            503,
            "API keys are not loaded on this server; retry later",
            code="keys_unavailable",
            headers={"Retry-After": "10"},
        )
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
HubDep = Annotated[WatchHub, Depends(get_hub)]
StreamSlotsDep = Annotated[Slots, Depends(get_stream_slots)]
KubeEventsDep = Annotated[KubeEvents, Depends(get_kube_events)]
EraserDep = Annotated[Eraser, Depends(get_eraser)]
SubmittingDep = Annotated[Submitting, Depends(submitting)]
