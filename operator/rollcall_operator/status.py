"""What an RJ's status should say, given its Job and the Job's pods: pure functions, no I/O.

The handlers read a Job and its pods, call ``job_status_patch`` and send the result as a JSON merge
patch on the RJ's status subresource. Fields that no longer apply are sent as ``None`` (merge-patch
for "delete"). Terminal phases never move again, so a late or replayed event cannot resurrect a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rollcall_contract import labels
from rollcall_contract.jobenv import ExitCode
from rollcall_contract.model import TERMINAL_PHASES, Phase, Summary

# Condition types, one idea each; ``phase`` is the one-word summary of them.
ADMITTED = "Admitted"  # a Job exists (False while Queued)
RUNNING = "Running"
SUSPENDED = "Suspended"
FINISHED = "Finished"  # terminal; reason says how

# Job failure reasons (batch/v1 Job condition reasons) -> what status.reason says.
_FAILURE_REASONS = {
    "PodFailurePolicy": "BadInput",
    "BackoffLimitExceeded": "BackoffLimitExceeded",
    "DeadlineExceeded": "DeadlineExceeded",
}
_MAX_MESSAGE = 1024
KUEUE_WAITING = "waiting for Kueue admission"


@dataclass(frozen=True)
class Observed:
    """The RJ-relevant facts read off one Job and its pods."""

    phase: Phase
    reason: str | None
    message: str | None
    attempts: int
    start_time: str | None
    completion_time: str | None
    summary: Summary | None
    suspended: bool


def parse_termination_message(text: str | None) -> tuple[Summary | None, str | None]:
    """(summary, error) from the container's termination message.

    The container writes JSON: the summary itself, or ``{"summary": {...}}``, and on failure
    ``{"error": "..."}``. Anything else (e.g. a log tail from FallbackToLogsOnError) is an error
    text, truncated.
    """
    if not text or not text.strip():
        return None, None
    try:
        doc = json.loads(text)
    except ValueError:
        return None, _clip(text.strip())
    if not isinstance(doc, dict):
        return None, _clip(text.strip())
    error = doc.get("error") or doc.get("message")
    raw = doc.get("summary", doc if error is None else None)
    summary = None
    if isinstance(raw, dict):
        known = {k: v for k, v in raw.items() if k in Summary.model_fields}
        try:
            summary = Summary.model_validate(known)
        except ValidationError:
            summary = None
    return summary, _clip(str(error)) if error else None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (cs.get("state") or {}).get("terminated")
        if state:
            return state  # type: ignore[no-any-return]
    return None


def _by_age(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )


def _pending_reason(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """Why the newest pod is not running yet: unschedulable, image pull, ... or just created."""
    for pod in reversed(_by_age(pods)):
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return cond.get("reason") or "Unschedulable", cond.get("message")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason"):
                return waiting["reason"], waiting.get("message")
    return "JobCreated", None  # nothing specific: keep the reason (and save a status write)


def _last_failure(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in reversed(_by_age(pods)):
        state = _terminated(pod)
        if state and state.get("exitCode", 0) != 0:
            _, error = parse_termination_message(state.get("message"))
            code = state.get("exitCode")
            label = "bad input" if code == ExitCode.BAD_INPUT else f"exit code {code}"
            return f"{label}: {error}" if error else label
    return None


def kueue_reason(workload: Mapping[str, Any] | None) -> str | None:
    """Kueue's own words on why it has not admitted a Workload (QuotaReserved, then Admitted).

    Kueue keeps them on the Workload it made for the Job, not on the Job itself.
    """
    for kind in ("QuotaReserved", "Admitted"):
        for cond in (workload or {}).get("status", {}).get("conditions") or []:
            if cond.get("type") == kind and cond.get("status") == "False":
                text = cond.get("message") or cond.get("reason")
                if text:
                    return str(text)
    return None


def observe_job(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    kueue: bool = False,
    kueue_detail: str | None = None,
) -> Observed:
    """Map a Job (and its pods, possibly none) to one phase, a reason and the run's numbers.

    ``kueue_detail``: Kueue's reason for holding a suspended Job (see ``kueue_reason``).
    """
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    attempts = int(status.get("succeeded", 0)) + int(status.get("failed", 0))
    attempts += int(status.get("active", 0))
    start = status.get("startTime")
    suspended = bool(spec.get("suspend")) or _condition(job, "Suspended") is not None
    if (done := _condition(job, "Complete")) is not None:
        summary = None
        for pod in reversed(_by_age(pods)):
            state = _terminated(pod)
            if state and state.get("exitCode") == 0:
                summary, _ = parse_termination_message(state.get("message"))
                break
        completed = status.get("completionTime") or done.get("lastTransitionTime")
        return Observed(
            Phase.SUCCEEDED, "Completed", None, attempts, start, completed, summary, False
        )
    if (failed := _condition(job, "Failed")) is not None:
        reason = _FAILURE_REASONS.get(failed.get("reason", ""), failed.get("reason") or "JobFailed")
        detail = _last_failure(pods)
        message = failed.get("message") or ""
        if detail and reason in {"BadInput", "BackoffLimitExceeded"}:
            message = detail
        return Observed(
            Phase.FAILED,
            reason,
            _clip(message) or None,
            attempts,
            start,
            failed.get("lastTransitionTime"),
            None,
            False,
        )
    if suspended:
        if kueue:
            return Observed(
                Phase.QUEUED, "WaitingForKueue",
                _clip(f"{KUEUE_WAITING}: {kueue_detail}" if kueue_detail else KUEUE_WAITING),
                attempts, start, None, None, True,
            )  # fmt: skip
        return Observed(
            Phase.PENDING,
            "Suspended",
            "runPolicy.suspend is true",
            attempts,
            start,
            None,
            None,
            True,
        )
    running = [
        p for p in pods
        if (p.get("status") or {}).get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    # A pod that exited 0 before the Job controller marks the Job Complete is still this run's
    # tail, not a return to Pending.
    finishing = any((p.get("status") or {}).get("phase") == "Succeeded" for p in pods) or bool(
        (status.get("uncountedTerminatedPods") or {}).get("succeeded")
    )
    if running or finishing or (not pods and int(status.get("ready", 0) or 0) > 0):
        return Observed(Phase.RUNNING, None, None, attempts, start, None, None, False)
    if int(status.get("failed", 0)) > 0 and not int(status.get("active", 0)):
        return Observed(
            Phase.PENDING, "Retrying", _last_failure(pods), attempts, start, None, None, False
        )
    reason, message = _pending_reason(pods) if pods else ("JobCreated", None)
    if int(status.get("failed", 0)) > 0:
        reason, message = "Retrying", _last_failure(pods) or message
    return Observed(Phase.PENDING, reason, message, attempts, start, None, None, False)


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    kind: str,
    value: bool,
    reason: str,
    message: str,
    now: str,
) -> list[dict[str, Any]]:
    """``conditions`` with ``kind`` set; lastTransitionTime moves only when the status flips."""
    out: list[dict[str, Any]] = []
    status = "True" if value else "False"
    found = False
    for cond in conditions:
        if cond.get("type") != kind:
            out.append(dict(cond))
            continue
        found = True
        flipped = cond.get("status") != status
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if flipped else cond.get("lastTransitionTime", now),
            }
        )
    if not found:
        out.append(
            {"type": kind, "status": status, "reason": reason, "message": message,
             "lastTransitionTime": now}
        )  # fmt: skip
    return out


_STARTED_PHASES = {Phase.RUNNING.value, *(p.value for p in TERMINAL_PHASES)}
# Every status write sets one of these (``phase_patch`` always sets conditions); the CRD's
# defaults set none of them.
_WRITTEN_KEYS = ("conditions", "reason", "message", "jobName", "queuedTime")


def unwritten(current: Mapping[str, Any]) -> bool:
    """No writer has set this status yet: it is absent, or holds only the CRD's defaults.

    The CRD defaults ``status`` to ``{}`` and so ``phase`` to Pending: the apiserver fills them in
    whenever it reads an RJ, so a new RJ reads as Pending although nobody wrote it.
    """
    return current.get("phase") in (None, Phase.PENDING.value) and not any(
        current.get(key) for key in _WRITTEN_KEYS
    )


def pending_by_default(current: Mapping[str, Any], seen: Observed) -> bool:
    """The CRD's default Pending already says what ``seen`` would write: no write is needed.

    True for a Job that merely exists (Pending, "JobCreated", nothing else to report) while the RJ
    still reads as the defaults left it. ``jobName``, ``attempts``, ``startTime`` and the
    conditions land with the next real transition (the Job's name is deterministic:
    ``builder.job_name``). An absent status (a CRD from before the default; Helm never upgrades
    CRDs) still gets its Pending written.
    """
    return (
        (seen.phase, seen.reason, seen.message, seen.suspended)
        == (Phase.PENDING, "JobCreated", None, False)
        and current.get("phase") == Phase.PENDING.value
        and unwritten(current)
    )


def phase_patch(
    current: Mapping[str, Any],
    phase: Phase,
    *,
    reason: str | None,
    message: str | None,
    now: str,
    extra: Mapping[str, Any] | None = None,
    suspended: bool | None = None,
) -> dict[str, Any] | None:
    """The status merge patch that moves an RJ to ``phase`` (None: nothing would change).

    A terminal phase is final: later observations cannot change it.
    """
    old_phase = current.get("phase")
    if old_phase in TERMINAL_PHASES:
        return None
    conds: list[dict[str, Any]] = list(current.get("conditions") or [])
    why = reason or phase.value
    if phase is Phase.QUEUED:
        conds = set_condition(conds, ADMITTED, False, why, message or "", now)
    elif phase in {Phase.PENDING, Phase.RUNNING} or current.get("jobName"):
        conds = set_condition(conds, ADMITTED, True, "JobCreated", "", now)
    conds = set_condition(conds, RUNNING, phase is Phase.RUNNING, why, message or "", now)
    if phase in TERMINAL_PHASES:
        conds = set_condition(conds, FINISHED, True, why, message or "", now)
    if suspended is not None and (suspended or any(c["type"] == SUSPENDED for c in conds)):
        word = "Suspended" if suspended else "Resumed"
        conds = set_condition(conds, SUSPENDED, suspended, word, "", now)
    patch: dict[str, Any] = {"phase": phase.value, "reason": reason, "message": message}
    patch.update(extra or {})
    if conds != list(current.get("conditions") or []):
        patch["conditions"] = conds
    changed = {k: v for k, v in patch.items() if current.get(k) != v}
    return changed or None


def waiting_patch(
    current: Mapping[str, Any],
    reason: str,
    message: str | None,
    *,
    now: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Admission's "Queued" for an RJ that has no Job yet (None once its status names one).

    From the Job's creation on, the Job's state decides the phase (``job_status_patch``): an
    admission round working from an older view must not pull a started RJ back to Queued. (A Job
    that merely exists writes nothing, see ``pending_by_default``; admission queues only RJs that
    have no Job, so no Queued write follows it.)
    """
    if current.get("jobName") or current.get("phase") in _STARTED_PHASES:
        return None
    return phase_patch(current, Phase.QUEUED, reason=reason, message=message, now=now, extra=extra)


def job_status_patch(
    current: Mapping[str, Any],
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    now: str,
    kueue: bool = False,
    kueue_detail: str | None = None,
    generation: int | None = None,
    result_key: str | None = None,
) -> dict[str, Any] | None:
    """The RJ status merge patch that reflects ``job`` (None when the status already says it)."""
    seen = observe_job(job, pods, kueue=kueue, kueue_detail=kueue_detail)
    if pending_by_default(current, seen):
        return None
    extra: dict[str, Any] = {
        "jobName": job["metadata"]["name"],
        "resultKey": result_key,
        "attempts": max(seen.attempts, int(current.get("attempts") or 0)),
        "startTime": seen.start_time or current.get("startTime"),
    }
    if generation is not None:
        extra["observedGeneration"] = generation
    # The card the Job runs, from its label (see builder.build_job); Jobs of an older operator
    # carry none, and their RJs keep no status.model.
    model = (job["metadata"].get("labels") or {}).get(labels.MODEL)
    if model:
        extra["model"] = model
    if seen.completion_time:
        extra["completionTime"] = seen.completion_time
    if seen.summary is not None:
        extra["summary"] = seen.summary.model_dump(by_alias=True)
    if seen.phase is Phase.SUCCEEDED:
        progress = dict(current.get("progress") or {})
        total = max(int(progress.get("total") or 0), seen.summary.images if seen.summary else 0)
        extra["progress"] = {"done": total, "total": total, "text": f"{total}/{total}"}
    return phase_patch(
        current,
        seen.phase,
        reason=seen.reason,
        message=seen.message,
        now=now,
        extra=extra,
        suspended=seen.suspended,
    )


def progress_patch(current: Mapping[str, Any], done: int, total: int) -> dict[str, Any] | None:
    """Progress copied from Redis; only while running, and only when it moved."""
    if current.get("phase") != Phase.RUNNING.value:
        return None
    new = {"done": done, "total": total, "text": f"{done}/{total}"}
    if (current.get("progress") or {}) == new:
        return None
    return {"progress": new}
