"""Job (+ pods) state -> RJ phase, reason, attempts, times and summary: table-driven, no server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollcall_contract.model import Phase
from rollcall_operator.status import job_status_patch as patch_for
from rollcall_operator.status import (
    observe_job,
    parse_termination_message,
    phase_patch,
    progress_patch,
    set_condition,
    unwritten,
    waiting_patch,
)

T0, T1, T2 = "2026-11-27T10:00:00Z", "2026-11-27T10:01:00Z", "2026-11-27T10:02:00Z"
SUMMARY = {"images": 12, "faces": 30, "matched": 27, "unknown": 3, "present": 25, "absent": 2}


def job(*conds: tuple[str, str], suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "math-7b"},
        "spec": {"suspend": suspend},
        "status": {
            "startTime": T0,
            **status,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{r} happened",
                 "lastTransitionTime": T2}
                for t, r in conds
            ],
        },
    }  # fmt: skip


def pod(
    name: str,
    phase: str,
    *,
    exit_code: int | None = None,
    message: str | None = None,
    created: str = T0,
    waiting: str | None = None,
    unschedulable: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if exit_code is not None:
        state["terminated"] = {"exitCode": exit_code, "message": message}
    elif waiting:
        state["waiting"] = {"reason": waiting, "message": "pulling"}
    conditions = (
        [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
          "message": "0/1 nodes have nvidia.com/gpu"}]
        if unschedulable else []
    )  # fmt: skip
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "recognize", "state": state}],
        },
    }


OK_MSG = json.dumps({"summary": SUMMARY})
BAD_MSG = json.dumps({"error": "no photos under images.subPath"})

CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], bool, tuple[Any, ...]]] = [
    # id, job, pods, kueue, (phase, reason, attempts)
    ("just created", job(), [], False, (Phase.PENDING, "JobCreated", 0)),
    (
        "pod pending, unschedulable",
        job(active=1),
        [pod("p1", "Pending", unschedulable=True)],
        False,
        (Phase.PENDING, "Unschedulable", 1),
    ),
    (
        "image pull",
        job(active=1),
        [pod("p1", "Pending", waiting="ImagePullBackOff")],
        False,
        (Phase.PENDING, "ImagePullBackOff", 1),
    ),
    ("running", job(active=1), [pod("p1", "Running")], False, (Phase.RUNNING, None, 1)),
    (
        # The pod has exited 0 but the Job controller has not counted it yet: still running,
        # never back to Pending (clients watching the phase saw Running -> Pending -> Succeeded).
        "pod done, Job not yet Complete",
        job(uncountedTerminatedPods={"succeeded": ["uid-1"]}),
        [pod("p1", "Succeeded", exit_code=0, message=OK_MSG)],
        False,
        (Phase.RUNNING, None, 0),
    ),
    (
        "running per ready count, no pods read",
        job(active=1, ready=1),
        [],
        False,
        (Phase.RUNNING, None, 1),
    ),
    (
        "succeeded",
        job(("Complete", "CompletionsReached"), succeeded=1, completionTime=T1),
        [pod("p1", "Succeeded", exit_code=0, message=OK_MSG)],
        False,
        (Phase.SUCCEEDED, "Completed", 1),
    ),
    (
        "bad input: failed at once by podFailurePolicy",
        job(("FailureTarget", "PodFailurePolicy"), ("Failed", "PodFailurePolicy"), failed=1),
        [pod("p1", "Failed", exit_code=42, message=BAD_MSG)],
        False,
        (Phase.FAILED, "BadInput", 1),
    ),
    (
        "transient failure, retry pending",
        job(failed=1, active=1),
        [pod("p1", "Failed", exit_code=75, created=T0), pod("p2", "Pending", created=T1)],
        False,
        (Phase.PENDING, "Retrying", 2),
    ),
    (
        "transient failure, retry running",
        job(failed=1, active=1),
        [pod("p1", "Failed", exit_code=75, created=T0), pod("p2", "Running", created=T1)],
        False,
        (Phase.RUNNING, None, 2),
    ),
    (
        "backoff exhausted",
        job(("Failed", "BackoffLimitExceeded"), failed=3),
        [pod(f"p{i}", "Failed", exit_code=75, created=f"2026-11-27T10:0{i}:00Z") for i in range(3)],
        False,
        (Phase.FAILED, "BackoffLimitExceeded", 3),
    ),
    (
        "deadline",
        job(("Failed", "DeadlineExceeded"), failed=1),
        [],
        False,
        (Phase.FAILED, "DeadlineExceeded", 1),
    ),
    (
        "suspended by the user",
        job(("Suspended", "JobSuspended"), suspend=True),
        [],
        False,
        (Phase.PENDING, "Suspended", 0),
    ),
    (
        "suspended, waiting for Kueue",
        job(suspend=True),
        [],
        True,
        (Phase.QUEUED, "WaitingForKueue", 0),
    ),
]


@pytest.mark.parametrize(
    ("j", "pods", "kueue", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_observe_job(
    j: dict[str, Any], pods: list[dict[str, Any]], kueue: bool, expected: tuple[Any, ...]
) -> None:
    seen = observe_job(j, pods, kueue=kueue)
    assert (seen.phase, seen.reason, seen.attempts) == expected
    assert seen.start_time == T0


def test_success_carries_summary_and_times() -> None:
    j = job(("Complete", "CompletionsReached"), succeeded=1, completionTime=T1)
    patch = patch_for(
        {"phase": "Running"}, j, [pod("p", "Succeeded", exit_code=0, message=OK_MSG)], now=T2
    )
    assert patch is not None
    assert patch["phase"] == "Succeeded"
    assert patch["summary"]["present"] == 25 and patch["summary"]["absent"] == 2
    assert (patch["startTime"], patch["completionTime"]) == (T0, T1)
    assert patch["progress"] == {"done": 12, "total": 12, "text": "12/12"}
    finished = next(c for c in patch["conditions"] if c["type"] == "Finished")
    assert finished["status"] == "True" and finished["reason"] == "Completed"


def test_bad_input_message_is_the_containers_error() -> None:
    j = job(("Failed", "PodFailurePolicy"), failed=1)
    seen = observe_job(j, [pod("p", "Failed", exit_code=42, message=BAD_MSG)])
    assert seen.message == "bad input: no photos under images.subPath"


def test_deadline_message_from_the_job() -> None:
    seen = observe_job(job(("Failed", "DeadlineExceeded")), [])
    assert seen.message == "DeadlineExceeded happened"


def test_terminal_phase_is_final() -> None:
    current = {"phase": "Succeeded"}
    assert patch_for(current, job(active=1), [pod("p", "Running")], now=T2) is None
    failed = {"phase": "Failed"}
    assert phase_patch(failed, Phase.RUNNING, reason=None, message=None, now=T2) is None


def test_no_change_no_patch() -> None:
    first = patch_for({}, job(active=1), [pod("p", "Running")], now=T1)
    assert first is not None
    again = patch_for(first, job(active=1), [pod("p", "Running")], now=T2)
    assert again is None


def test_suspend_and_resume_conditions() -> None:
    running = patch_for({}, job(active=1), [pod("p", "Running")], now=T0)
    assert running is not None
    suspended = patch_for(running, job(suspend=True), [], now=T1)
    assert suspended is not None
    cond = {c["type"]: c for c in suspended["conditions"]}
    assert cond["Suspended"]["status"] == "True" and suspended["phase"] == "Pending"
    resumed = patch_for({**running, **suspended}, job(active=1), [pod("q", "Running")], now=T2)
    assert resumed is not None
    cond = {c["type"]: c for c in resumed["conditions"]}
    assert cond["Suspended"]["status"] == "False" and resumed["phase"] == "Running"


def test_queued_patch_clears_admitted() -> None:
    patch = phase_patch(
        {}, Phase.QUEUED, reason="WaitingForCapacity", message="2/2 running", now=T0
    )
    assert patch is not None
    admitted = next(c for c in patch["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "WaitingForCapacity"


@pytest.mark.parametrize(
    ("text", "summary_present", "error"),
    [
        (None, None, None),
        ("", None, None),
        (json.dumps(SUMMARY), 25, None),
        (json.dumps({"summary": SUMMARY, "extra": 1}), 25, None),
        (json.dumps({"summary": {**SUMMARY, "newField": 1}}), 25, None),
        (BAD_MSG, None, "no photos under images.subPath"),
        ("Traceback: boom", None, "Traceback: boom"),
        ("[1, 2]", None, "[1, 2]"),
        ("x" * 5000, None, "x" * 1023 + "…"),
    ],
)
def test_parse_termination_message(
    text: str | None, summary_present: int | None, error: str | None
) -> None:
    summary, got_error = parse_termination_message(text)
    assert (summary.present if summary else None) == summary_present
    assert got_error == error


def test_set_condition_keeps_transition_time_when_unchanged() -> None:
    conds = set_condition([], "Running", True, "R", "", T0)
    assert set_condition(conds, "Running", True, "R", "m", T1)[0]["lastTransitionTime"] == T0
    assert set_condition(conds, "Running", False, "R", "", T1)[0]["lastTransitionTime"] == T1


def test_progress_only_while_running_and_when_moved() -> None:
    assert progress_patch({"phase": "Pending"}, 1, 10) is None
    assert progress_patch({"phase": "Running"}, 1, 10) == {
        "progress": {"done": 1, "total": 10, "text": "1/10"}
    }
    assert (
        progress_patch(
            {"phase": "Running", "progress": {"done": 1, "total": 10, "text": "1/10"}}, 1, 10
        )
        is None
    )


@pytest.mark.parametrize(
    ("current", "writes"),
    [
        ({}, True),  # new: admission says why it waits
        ({"phase": "Pending"}, True),  # waiting for a slot, no Job yet
        ({"phase": "Queued", "reason": "Other"}, True),  # a new reason
        ({"phase": "Pending", "jobName": "j"}, False),  # the Job exists: the fold owns the phase
        ({"phase": "Running"}, False),  # never back from Running
        ({"phase": "Succeeded"}, False),
        ({"phase": "Failed"}, False),
        ({"phase": "Cancelled"}, False),
    ],
)
def test_admission_only_queues_an_rj_that_has_no_job(current: dict[str, Any], writes: bool) -> None:
    patch = waiting_patch(current, "WaitingForSlot", "2/2 running", now=T0)
    assert (patch is not None) is writes
    if patch is not None:
        assert {**current, **patch}["phase"] == "Queued" and patch["reason"] == "WaitingForSlot"


# What the CRD's defaults make of a new RJ's status (the apiserver applies them on every read).
DEFAULTED = {"phase": "Pending", "conditions": [], "attempts": 0,
             "progress": {"done": 0, "total": 0, "text": ""}}  # fmt: skip
QUEUED = {"phase": "Queued", "reason": "WaitingForCapacity", "queuedTime": T0,
          "conditions": [{"type": "Admitted", "status": "False"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ({}, True),  # no status at all (a CRD without the default)
        (DEFAULTED, True),
        ({**DEFAULTED, "jobName": "math-7b"}, False),  # written by hand or by another writer
        ({**DEFAULTED, "reason": "JobCreated"}, False),
        ({**DEFAULTED, "conditions": [{"type": "Running", "status": "False"}]}, False),
        ({"phase": "Queued"}, False),
        ({"phase": "Running"}, False),
        (QUEUED, False),
    ],
)
def test_unwritten(current: dict[str, Any], expected: bool) -> None:
    assert unwritten(current) is expected


@pytest.mark.parametrize(
    ("current", "the_job", "pods", "writes"),
    [
        # the Job merely exists: the default Pending says it all, no write in a burst
        (DEFAULTED, job(), [], None),
        (DEFAULTED, job(active=1), [pod("p", "Pending")], None),  # created, nothing specific yet
        # no status at all (a CRD from before the default): Pending is written
        ({}, job(), [], ("Pending", "JobCreated")),
        # a Job for an RJ that was Queued: the move to Pending is news
        (QUEUED, job(), [], ("Pending", "JobCreated")),
        # news on a defaulted status is written, with jobName
        (DEFAULTED, job(active=1), [pod("p", "Pending", unschedulable=True)],
         ("Pending", "Unschedulable")),
        (DEFAULTED, job(active=1), [pod("p", "Pending", waiting="ImagePullBackOff")],
         ("Pending", "ImagePullBackOff")),
        (DEFAULTED, job(suspend=True), [], ("Pending", "Suspended")),
        (DEFAULTED, job(active=1), [pod("p", "Running")], ("Running", None)),
        (DEFAULTED, job(failed=1), [pod("p", "Failed", exit_code=1)], ("Pending", "Retrying")),
        (DEFAULTED, job(("Complete", "Done")), [pod("p", "Succeeded", exit_code=0)],
         ("Succeeded", "Completed")),
    ],
)  # fmt: skip
def test_a_job_that_merely_exists_writes_nothing_over_the_default_pending(
    current: dict[str, Any],
    the_job: dict[str, Any],
    pods: list[dict[str, Any]],
    writes: tuple[str, str | None] | None,
) -> None:
    patch = patch_for(current, the_job, pods, now=T1)
    if writes is None:
        assert patch is None
    else:
        assert patch is not None
        assert ({**current, **patch}["phase"], patch.get("reason")) == writes
        assert patch["jobName"] == "math-7b"


INT8 = "mobilefacenet-sirius-int8-v2"


def labelled(j: dict[str, Any], model: str) -> dict[str, Any]:
    """``j`` as the operator labels it: ``rollcall.io/model`` names the card it runs."""
    return {**j, "metadata": {**j["metadata"], "labels": {"rollcall.io/model": model}}}


@pytest.mark.parametrize(
    ("current", "the_job", "pods", "model"),
    [
        # the card lands with jobName, in the write the fold makes anyway
        (DEFAULTED, labelled(job(active=1), INT8), [pod("p", "Running")], INT8),
        ({}, labelled(job(), "default"), [], "default"),
        (QUEUED, labelled(job(), "dlib-resnet-v1"), [], "dlib-resnet-v1"),
        (DEFAULTED, labelled(job(("Complete", "Done")), INT8),
         [pod("p", "Succeeded", exit_code=0, message=OK_MSG)], INT8),
        # a Job from an older operator has no label: no status.model, the rest as before
        (DEFAULTED, job(active=1), [pod("p", "Running")], None),
        (QUEUED, job(), [], None),
    ],
)  # fmt: skip
def test_status_model_comes_from_the_jobs_label(
    current: dict[str, Any],
    the_job: dict[str, Any],
    pods: list[dict[str, Any]],
    model: str | None,
) -> None:
    patch = patch_for(current, the_job, pods, now=T1)
    assert patch is not None and patch["jobName"] == "math-7b"
    assert patch.get("model") == model
    assert ("model" in patch) is (model is not None)
    # folded again, unchanged: nothing to write (the label costs no write of its own)
    assert patch_for({**current, **patch}, the_job, pods, now=T2) is None


def test_a_labelled_job_that_merely_exists_still_writes_nothing() -> None:
    """status.model lands with jobName at the next transition, as jobName does: no extra write."""
    assert patch_for(DEFAULTED, labelled(job(), INT8), [], now=T1) is None
