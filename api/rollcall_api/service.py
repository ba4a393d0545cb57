"""Job logic shared by the routes: submit (with idempotency), views, results. No HTTP here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from typing import Any

from pydantic import ValidationError

from rollcall_api import kube
from rollcall_api.auth import Caller
from rollcall_api.errors import ApiError
from rollcall_api.kube import RecognitionJobs
from rollcall_api.logs import request_id_var
from rollcall_api.schemas import JobRequest, JobView, Links, ProgressOut
from rollcall_api.store import Claim, Store
from rollcall_contract import labels
from rollcall_contract.model import Phase, Progress, RecognitionJobStatus, Summary

log = logging.getLogger("rollcall_api.service")

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
JOB_ID = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
label_value_ok = labels.is_label_value


def resolve_namespace(caller: Caller, requested: str | None) -> str:
    if requested is None:
        return caller.default_namespace
    if requested not in caller.namespaces:
        # Same answer as for a namespace that does not exist: do not reveal other schools'.
        raise ApiError(404, f"namespace {requested} not found")
    return requested


def check_job_id(job_id: str) -> None:
    if len(job_id) > 253 or not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "recognition job not found")


def parse_status(raw: dict[str, Any] | None) -> RecognitionJobStatus:
    """The RJ status, tolerant of fields this API version does not know yet."""
    raw = raw or {}
    try:
        return RecognitionJobStatus.model_validate(raw)
    except ValidationError:
        pass
    picked: dict[str, Any] = {}
    for key in ("phase", "progress", "summary", "reason", "message", "startTime", "completionTime"):
        value = raw.get(key)
        if isinstance(value, dict):  # keep the counts/fields this version knows
            known = Summary.model_fields if key == "summary" else Progress.model_fields
            value = {k: v for k, v in value.items() if k in known}
        try:
            RecognitionJobStatus.model_validate({key: value})
        except ValidationError:
            continue
        picked[key] = value
    try:
        return RecognitionJobStatus.model_validate(picked)
    except ValidationError:
        return RecognitionJobStatus()


def links(base: str, job_id: str) -> Links:
    url = f"{base}/v1/recognition-jobs/{job_id}"
    return Links(self=url, results=f"{url}/results", events=f"{url}/events")


def job_view(obj: dict[str, Any], base: str, progress: tuple[int, int] | None = None) -> JobView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = parse_status(obj.get("status"))
    done, total = status.progress.done, status.progress.total
    if progress is not None and progress[0] >= done:
        done, total = progress
    return JobView(
        id=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        mode=str(spec.get("mode", "identify")),
        class_code=str(spec.get("classCode", "")),
        phase=status.phase,
        progress=ProgressOut(done=done, total=total),
        summary=status.summary,
        model=status.model,
        reason=status.reason,
        message=status.message,
        created_at=meta.get("creationTimestamp"),
        start_time=status.start_time,
        completion_time=status.completion_time,
        links=links(base, str(meta.get("name", ""))),
        spec=spec,
    )


async def view_with_progress(store: Store, obj: dict[str, Any], base: str) -> JobView:
    """Overlay the job's own Redis progress while it runs (the RJ status lags behind it)."""
    status = parse_status(obj.get("status"))
    progress = None
    meta = obj.get("metadata") or {}
    uid, namespace = meta.get("uid"), meta.get("namespace")
    if status.phase is Phase.RUNNING and uid and namespace:
        progress = await store.progress(str(namespace), str(uid))
    return job_view(obj, base, progress)


def fingerprint(namespace: str, spec: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"namespace": namespace, "spec": spec}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def submit(
    jobs: RecognitionJobs,
    store: Store,
    caller: Caller,
    request: JobRequest,
    idempotency_key: str | None,
    idempotency_ttl: int,
) -> tuple[dict[str, Any], bool]:
    """Create the RJ -> (object, replayed). A retried Idempotency-Key returns the first job."""
    namespace = resolve_namespace(caller, request.namespace)
    spec = request.spec_body()
    labels = {kube.LABEL_MANAGED_BY: kube.MANAGER, kube.LABEL_MODE: str(request.mode)}
    if label_value_ok(request.class_code):
        labels[kube.LABEL_CLASS] = request.class_code
    annotations = {kube.ANNOTATION_SCHOOL: caller.school}
    if rid := request_id_var.get():
        annotations[kube.ANNOTATION_REQUEST_ID] = rid
    name = kube.new_job_name()

    if idempotency_key is None:
        return await jobs.create(namespace, name, spec, labels, annotations), False

    if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ApiError(400, "Idempotency-Key must be 1-255 visible ASCII characters")
    fp = fingerprint(namespace, spec)
    for _ in range(3):
        claim = await store.claim(namespace, idempotency_key, name, fp, idempotency_ttl)
        if claim.won:
            try:
                return await jobs.create(namespace, name, spec, labels, annotations), False
            except BaseException:
                await asyncio.shield(store.release(namespace, idempotency_key, claim))
                raise
        if claim.fingerprint != fp:
            raise ApiError(
                409,
                "Idempotency-Key was already used with a different request",
                code="idempotency_key_reused",
            )
        obj = await _first_job(jobs, store, namespace, idempotency_key, claim)
        if obj is not None:
            return obj, True
        # The first request failed and let the key go: this retry may create the job itself.
    raise ApiError(503, "Idempotency-Key is contended, retry later", headers={"Retry-After": "1"})


async def _first_job(
    jobs: RecognitionJobs, store: Store, namespace: str, key: str, claim: Claim
) -> dict[str, Any] | None:
    """The job the winning request created (it may still be on its way to the apiserver).

    None if the winner gave the key up (its create failed); 409 if the job is gone for good.
    """
    for delay in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 0.0):
        obj = await jobs.get(namespace, claim.name)
        if obj is not None:
            return obj
        if not await store.holds(namespace, key, claim):
            return None
        await asyncio.sleep(delay)
    raise ApiError(
        409,
        "the job first created with this Idempotency-Key no longer exists; "
        "use a new key to submit again",
        code="idempotency_key_gone",
    )
