"""Dependencies declared once as ``Annotated`` aliases and reused in route signatures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request

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


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <key>`` header, as FastAPI's HTTPBearer
    reads them (scheme in any case, surrounding blanks dropped); None for anything else."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if not token or scheme.lower() != "bearer":
        return None
    return token


def authenticate(request: Request) -> Caller:
    """The school behind the bearer key; 401 (same answer) for a missing or unknown key, 503
    while the key file is unusable (every key is refused then: see ``KeyStore``).

    Plain code, not FastAPI's ``HTTPBearer`` and key-store dependencies under a third: each
    dependency FastAPI solves per request costs the event loop tens of microseconds. The
    OpenAPI document still names the bearer scheme (``app.document_bearer_scheme``).
    """
    challenge = {"WWW-Authenticate": "Bearer"}
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise ApiError(401, "missing API key (Authorization: Bearer <key>)", headers=challenge)
    keys: KeyStore = request.app.state.keys
    if not keys.loaded:
        raise ApiError(
            503,
            "API keys are not loaded on this server; retry later",
            code="keys_unavailable",
            headers={"Retry-After": "10"},
        )
    caller = keys.authenticate(token)
    if caller is None:
        raise ApiError(401, "unknown API key", headers=challenge)
    request.state.school = caller.school
    return caller


async def current_caller(request: Request) -> Caller:
    return authenticate(request)


@dataclass(frozen=True)
class Submitting:
    """What a submission needs besides its body: the caller, its Idempotency-Key and what it
    reads from app state, as one dependency, not four and a header parameter.

    FastAPI solves every dependency on every request; a trivial one costs tens of microseconds of
    the event loop (a toy route with 7 took 0.5-0.7 ms more than with 1, at load 13), and the
    submit routes are the API's busiest.
    """

    caller: Caller
    idempotency_key: str | None
    settings: Settings
    jobs: RecognitionJobs
    store: Store
    metrics: Metrics
    limiter: RateLimiter


async def submitting(request: Request) -> Submitting:
    caller = authenticate(request)  # a bad key is a 401 before the body is validated
    state = request.app.state
    return Submitting(
        caller,
        request.headers.get("idempotency-key"),
        state.settings,
        state.jobs,
        state.store,
        state.metrics,
        state.limiter,
    )


# How the OpenAPI document names the bearer key (as FastAPI's HTTPBearer did); every route
# under ``AUTHENTICATED_PREFIX`` demands it (``current_caller`` or ``submitting``).
BEARER_SCHEME = {"type": "http", "description": "A per-school API key.", "scheme": "bearer"}
AUTHENTICATED_PREFIX = "/v1/"


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
