"""/v1/enrollments: the same job resource in enroll mode, for clients that prefer a noun."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from rollcall_api.deps import SubmittingDep
from rollcall_api.errors import ERROR_RESPONSES
from rollcall_api.routes.jobs import SUBMIT_OPENAPI, accept
from rollcall_api.schemas import EnrollmentRequest, JobView

router = APIRouter(prefix="/v1/enrollments", tags=["enrollments"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Enroll a class: build its gallery from one photo folder per student",
    openapi_extra=SUBMIT_OPENAPI,
)
async def create_enrollment(
    response: Response, ctx: SubmittingDep, body: EnrollmentRequest
) -> JobView:
    """Equivalent to POST /v1/recognition-jobs with ``mode: enroll``; read it back there."""
    return await accept(response, ctx, body)
