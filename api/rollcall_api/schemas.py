"""Request and response bodies. Requests *are* the RJ spec model plus where to put the job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from rollcall_contract.model import DnsLabel, Mode, Phase, RecognitionJobSpec, Summary


class JobRequest(RecognitionJobSpec):
    """A RecognitionJob spec (camelCase, as in the CRD) plus the target namespace.

    ``namespace`` may be left out when the API key has one namespace (or to use its first).
    """

    namespace: DnsLabel | None = Field(
        default=None, description="Target namespace; must be one the API key may use."
    )

    def spec(self) -> RecognitionJobSpec:
        return RecognitionJobSpec.model_validate(self.model_dump(exclude={"namespace"}))

    def spec_body(self) -> dict[str, Any]:
        """The RJ spec as the apiserver takes it, straight from this already-validated request.

        Equal to ``spec().model_dump(...)`` without validating the spec a second time: that
        round trip was 130 us of the event loop's time per submission.
        """
        return self.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"namespace"})


class EnrollmentRequest(JobRequest):
    """An enroll-mode job: photos in one sub-folder per student id build the class gallery."""

    mode: Literal[Mode.ENROLL] = Field(default=Mode.ENROLL, description="Always enroll here.")


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ProgressOut(_Out):
    done: int = 0
    total: int = 0


class Links(_Out):
    self: str
    results: str
    events: str


class JobView(_Out):
    """A job as the school system sees it."""

    id: str = Field(description="The job id (the RecognitionJob's name).")
    namespace: str
    uid: str
    mode: str
    class_code: str
    phase: Phase
    progress: ProgressOut
    summary: Summary | None = None
    model: str | None = Field(
        default=None,
        description="The model card the job runs (its galleries are that card's): spec.model, or "
        "the cluster's default card for 'default'. Null until the operator has made its Job.",
    )
    reason: str | None = None
    message: str | None = None
    created_at: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    links: Links
    spec: dict[str, Any] = Field(description="The RecognitionJob spec as stored (defaults filled).")


class JobList(_Out):
    items: list[JobView]
    continue_: str | None = Field(
        default=None,
        alias="continue",
        description="Pass as ?continue= for the next page; null when there are no more. A page "
        "filtered by phase may hold fewer than limit items (even none) and still have a next page.",
    )


class JobResults(_Out):
    id: str
    phase: Phase
    summary: dict[str, Any] | None = None
    attendance: Any = Field(
        default=None,
        description="From the job: present (best face), uncertain (only faces needing a "
        "person's review point at them, listed with the rule), absent, not_enrolled; and the "
        "unknown and needs_review faces.",
    )
    photos: Any = Field(
        default=None,
        description="From the job, per photo and face: box, decision (matched | needs_review | "
        "unknown), the rule that decided (matched | below_threshold | ambiguous_second_student "
        "| contested_by_other_face | low_quality:<why>), student, and the nearest candidates "
        "with their distances.",
    )


class Health(_Out):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ErasureOut(_Out):
    """What an erase removed: counts and model ids, never a template."""

    namespace: str
    class_code: str
    student: str | None = Field(default=None, description="The erased student; null: the class.")
    models: list[str] = Field(description="Model ids whose gallery held (and no longer holds) it.")
    templates: int = Field(description="Gallery entries removed (one per student and model).")
    results: int = Field(description="Stored job results deleted because they named the student.")
    event_recorded: bool = Field(description="Whether the Kubernetes Event was recorded.")
