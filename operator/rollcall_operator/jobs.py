"""What the operator reads off its batch/v1 Jobs and their owner references (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollcall_contract.model import KIND


def finished(job: Mapping[str, Any]) -> bool:
    """The Job controller has given its verdict (Complete or Failed): no further pod runs."""
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def suspended(job: Mapping[str, Any]) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def controller(obj: Mapping[str, Any], kind: str = KIND) -> Mapping[str, Any] | None:
    """The owner reference of ``obj``'s controller of ``kind`` (the RJ of a Job, the Job of a pod)."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref  # type: ignore[no-any-return]
    return None


def owned_by(job: Mapping[str, Any] | None, rj_uid: str) -> bool:
    """``job`` exists and was made for the RJ ``rj_uid`` (not for a deleted namesake)."""
    ref = controller(job) if job is not None else None
    return ref is not None and ref.get("uid") == rj_uid


def pod_selector(job: Mapping[str, Any]) -> str:
    """The label selector of the Job's own pods (the Job controller sets it)."""
    return f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"


def needs_pods(job: Mapping[str, Any]) -> bool:
    """Whether folding ``job`` needs its pods: to read a verdict or a running/pending pod's state."""
    return finished(job) or int((job.get("status") or {}).get("active") or 0) > 0
