"""/v1/recognition-jobs: submit, read, list, cancel, results, live events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse

from rollcall_api import events, service
from rollcall_api.deps import (
    CallerDep,
    HubDep,
    JobsDep,
    MetricsDep,
    SettingsDep,
    StoreDep,
    StreamSlotsDep,
    Submitting,
    SubmittingDep,
)
from rollcall_api.errors import ERROR_RESPONSES, ApiError
from rollcall_api.kube import LABEL_CLASS, LABEL_MODE
from rollcall_api.limits import SlotsExhausted
from rollcall_api.middleware import Metrics
from rollcall_api.schemas import JobList, JobRequest, JobResults, JobView
from rollcall_contract.model import IDENT, TERMINAL_PHASES, Mode, Phase

router = APIRouter(
    prefix="/v1/recognition-jobs", tags=["recognition-jobs"], responses=ERROR_RESPONSES
)

# The Idempotency-Key header as the OpenAPI document shows it. The submit routes read it in their
# one dependency (``deps.submitting``), not as a FastAPI header parameter: FastAPI parses the
# query string, cookies and header parameters for every route that declares one.
IDEMPOTENCY_KEY_DOC = "Retrying a POST with the same key returns the first job, never a second one."
SUBMIT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": IDEMPOTENCY_KEY_DOC,
            "schema": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "title": "Idempotency-Key",
                "description": IDEMPOTENCY_KEY_DOC,
            },
        }
    ]
}


def _limited(metrics: Metrics, limit: str, message: str, retry_after: int) -> ApiError:
    """A 429 (code ``rate_limited``) with ``Retry-After``, counted by which limit refused it."""
    metrics.limited.labels(limit).inc()
    return ApiError(429, message, code="rate_limited", headers={"Retry-After": str(retry_after)})


async def accept(response: Response, ctx: Submitting, body: JobRequest) -> JobView:
    """Shared by POST /v1/recognition-jobs and POST /v1/enrollments; rate-limited per school."""
    metrics, caller = ctx.metrics, ctx.caller
    if wait := ctx.limiter.check(caller.school):
        raise _limited(metrics, "submissions", f"too many submissions; retry in {wait} s", wait)
    obj, replayed = await service.submit(
        ctx.jobs,
        ctx.store,
        caller,
        body,
        ctx.idempotency_key,
        ctx.settings.idempotency_ttl_seconds,
    )
    view = service.job_view(obj, ctx.settings.public_url)
    response.headers["Location"] = view.links.self
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
        metrics.idempotent_replays.inc()
    else:
        metrics.jobs_created.labels(view.mode).inc()
    return view


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    response_model_by_alias=True,
    summary="Submit a recognition (or enroll-mode) job",
    openapi_extra=SUBMIT_OPENAPI,
)
async def create_job(response: Response, ctx: SubmittingDep, body: JobRequest) -> JobView:
    """Record a RecognitionJob and return at once; follow ``links.self`` or ``links.events``.

    429 with ``Retry-After`` when the school is over its submission rate."""
    return await accept(response, ctx, body)


@router.get("", response_model=JobList, summary="List jobs, oldest first, a page at a time")
async def list_jobs(
    settings: SettingsDep,
    jobs: JobsDep,
    caller: CallerDep,
    namespace: Annotated[str | None, Query(max_length=63)] = None,
    class_code: Annotated[
        str | None, Query(alias="classCode", max_length=64, pattern=IDENT)
    ] = None,
    mode: Mode | None = None,
    phase: Phase | None = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    continue_token: Annotated[str | None, Query(alias="continue", max_length=4096)] = None,
) -> JobList:
    """Pages come from the apiserver (``continue`` tokens); ``phase`` filters each page."""
    ns = service.resolve_namespace(caller, namespace)
    selector = [f"{LABEL_MODE}={mode}"] if mode else []
    if class_code:
        if not service.label_value_ok(class_code):
            raise ApiError(400, "classCode longer than 63 characters cannot be filtered on")
        selector.append(f"{LABEL_CLASS}={class_code}")
    page = await jobs.list(
        ns,
        label_selector=",".join(selector),
        limit=limit or settings.list_limit_default,
        continue_token=continue_token,
    )
    views = [service.job_view(obj, settings.public_url) for obj in page.items]
    if phase is not None:
        views = [v for v in views if v.phase == phase]
    return JobList(items=views, continue_=page.continue_token)


async def _find(jobs: JobsDep, caller: CallerDep, job_id: str) -> dict[str, Any]:
    service.check_job_id(job_id)
    obj = await jobs.find(caller.namespaces, job_id)
    if obj is None:
        raise ApiError(404, "recognition job not found")
    return obj


@router.get("/{job_id}", response_model=JobView, summary="A job's phase, progress and summary")
async def get_job(
    job_id: str, settings: SettingsDep, jobs: JobsDep, store: StoreDep, caller: CallerDep
) -> JobView:
    obj = await _find(jobs, caller, job_id)
    return await service.view_with_progress(store, obj, settings.public_url)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Cancel a job (deletes the RecognitionJob; its Job and pods go with it)",
)
async def cancel_job(
    job_id: str, settings: SettingsDep, jobs: JobsDep, caller: CallerDep
) -> JobView:
    """202: deletion is asynchronous; the returned view is the job as it was when cancelled."""
    obj = await _find(jobs, caller, job_id)
    meta = obj.get("metadata") or {}
    await jobs.delete(str(meta.get("namespace")), job_id)
    return service.job_view(obj, settings.public_url)


@router.get(
    "/{job_id}/results",
    response_model=JobResults,
    summary="Per-photo detail and attendance (409 until the job has finished)",
)
async def get_results(job_id: str, jobs: JobsDep, store: StoreDep, caller: CallerDep) -> JobResults:
    obj = await _find(jobs, caller, job_id)
    view = service.job_view(obj, "")
    if view.phase not in TERMINAL_PHASES:
        raise ApiError(
            409, f"job is {view.phase}; results exist once it has finished", code="not_finished"
        )
    results = (
        await store.results(view.namespace, view.uid) if view.phase is Phase.SUCCEEDED else None
    )
    if view.phase is Phase.SUCCEEDED and results is None:
        raise ApiError(404, "results have expired or were never written", code="results_gone")
    results = results or {}
    summary = results.get("summary")
    if summary is None and view.summary is not None:
        summary = view.summary.model_dump(by_alias=True)
    return JobResults(
        id=view.id,
        phase=view.phase,
        summary=summary if isinstance(summary, dict) else None,
        attendance=results.get("attendance"),
        photos=results.get("photos"),
    )


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: progress and phase changes until the job ends",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An SSE stream."}},
)
async def job_events(
    job_id: str,
    settings: SettingsDep,
    jobs: JobsDep,
    store: StoreDep,
    caller: CallerDep,
    hub: HubDep,
    slots: StreamSlotsDep,
    metrics: MetricsDep,
) -> StreamingResponse:
    """Events: ``snapshot`` first, then ``progress`` / ``phase``, and ``end`` (or ``deleted``).

    429 when the API key already holds ``streams_per_key`` open streams on this server."""
    obj = await _find(jobs, caller, job_id)
    try:
        # the whole digest: two schools' keys may share ``key_id``'s 8-hex prefix, and must not
        # share a stream limit (one school would hold the other's streams)
        lease = slots.acquire(caller.digest.hex())
    except SlotsExhausted:
        message = f"this API key already has {slots.limit} open event streams; close one first"
        raise _limited(metrics, "streams", message, 5) from None
    stream = events.job_events(jobs, store, hub, obj, settings, lease)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
