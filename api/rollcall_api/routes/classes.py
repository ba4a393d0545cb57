"""/v1/classes/{class}: erase a student's templates, or a whole class gallery, in one school.

The school is the caller's namespace (``?namespace=`` picks another of the key's namespaces).
Another school's class of the same name is invisible: 404, as for a class that does not exist.
Each erase is recorded twice, with counts and never a template: a Kubernetes Event in the
school's namespace and an ``audit`` log line (who: school and key id; what; when: the log time).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query

from rollcall_api import service
from rollcall_api.auth import Caller
from rollcall_api.deps import CallerDep, EraserDep, KubeEventsDep
from rollcall_api.erasure import Erasure
from rollcall_api.errors import ERROR_RESPONSES, ApiError
from rollcall_api.kube import KubeEvents
from rollcall_api.schemas import ErasureOut
from rollcall_contract.model import IDENT

router = APIRouter(prefix="/v1/classes", tags=["data protection"], responses=ERROR_RESPONSES)
audit = logging.getLogger("rollcall_api.audit")

ClassCode = Annotated[str, Path(min_length=1, max_length=64, pattern=IDENT)]
StudentId = Annotated[str, Path(min_length=1, max_length=64, pattern=IDENT)]
Namespace = Annotated[str | None, Query(max_length=63)]


async def _record(
    events: KubeEvents,
    caller: Caller,
    namespace: str,
    action: str,
    class_code: str,
    student: str | None,
    done: Erasure,
) -> ErasureOut:
    """The Event, the audit line and the response of one erase (all carry the same counts)."""
    what = f"class {class_code}" if student is None else f"student {student} of class {class_code}"
    counts = (
        f"{done.templates} template(s) in {len(done.models)} model gallery(ies), "
        f"{done.results} stored result(s)"
    )
    recorded = await events.record(
        namespace, action, f"{what} erased by {caller.school} (key {caller.key_id}): {counts}"
    )
    audit.info(
        "biometric data erased",
        extra={
            "action": action,
            "school": caller.school,
            "key_id": caller.key_id,
            "namespace": namespace,
            "class_code": class_code,
            "student": student,
            "models": done.models,
            "templates": done.templates,
            "results": done.results,
            "event_recorded": recorded,
        },
    )
    return ErasureOut(
        namespace=namespace,
        class_code=class_code,
        student=student,
        models=done.models,
        templates=done.templates,
        results=done.results,
        event_recorded=recorded,
    )


@router.delete(
    "/{class_code}/students/{student_id}",
    response_model=ErasureOut,
    summary="Erase one student: their templates in every model's gallery, results naming them",
)
async def erase_student(
    class_code: ClassCode,
    student_id: StudentId,
    caller: CallerDep,
    eraser: EraserDep,
    events: KubeEventsDep,
    namespace: Namespace = None,
) -> ErasureOut:
    """404 when neither the class's galleries nor any stored result of this school holds the
    student. Jobs of the class running during the erase are not stopped: they leave the student
    out of their results and enrolment (even on a 404, as for a first enrolment under way).
    503 + Retry-After when Redis's replicas did not confirm the erase in time
    (``erase_unconfirmed``: it is applied on the primary), when the primary that was to confirm
    it does not hold it (``erase_interrupted``: a failover during the erase), or when Redis is
    unreachable (``unavailable``); repeat the request (idempotent) for the 200."""
    ns = service.resolve_namespace(caller, namespace)
    done = await eraser.erase_student(ns, class_code, student_id)
    if not done.found:
        where = f"class {class_code}" if done.class_found else f"class {class_code} (no gallery)"
        raise ApiError(404, f"student {student_id} not found in {where}")
    return await _record(events, caller, ns, "StudentErased", class_code, student_id, done)


@router.delete(
    "/{class_code}/gallery",
    response_model=ErasureOut,
    summary="Erase a class gallery: every student's templates, for every model",
)
async def erase_class(
    class_code: ClassCode,
    caller: CallerDep,
    eraser: EraserDep,
    events: KubeEventsDep,
    namespace: Namespace = None,
) -> ErasureOut:
    """Results of earlier jobs stay until their TTL; erase a student to drop theirs now. 503s as
    for a student's erase; repeat the request (idempotent)."""
    ns = service.resolve_namespace(caller, namespace)
    done = await eraser.erase_class(ns, class_code)
    if not done.class_found:
        raise ApiError(404, f"class {class_code} not found")
    return await _record(events, caller, ns, "ClassGalleryErased", class_code, None, done)
