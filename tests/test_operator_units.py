"""The operator runtime's pure parts, table-driven: cache, status writes, admission, folding,
progress and webhook delivery decisions (the I/O around them runs in the lifecycle tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY

from rollcall_contract.model import Phase
from rollcall_operator import jobs
from rollcall_operator.admission import queued_extra, seed_action
from rollcall_operator.cache import CachedRJ, RJCache, resource_version
from rollcall_operator.delivery import attempt_record, delivery_due
from rollcall_operator.folding import verdict_changed
from rollcall_operator.handlers import NoDiffBase, QuickProgress
from rollcall_operator.kube import Kube
from rollcall_operator.progress import moved
from rollcall_operator.queue import entry_for
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.statuswrite import run_seconds, transition_event
from rollcall_operator.times import parse_time
from rollcall_operator.webhook import Attempt

SPEC: dict[str, Any] = {"classCode": "c", "images": {"claimName": "p"}, "roster": ["s1"]}
HOOK = {"callback": {"url": "https://example.org/hook"}}


def body(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    *,
    uid: str = "u1",
    rv: str | None = "10",
    generation: int | None = 1,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": uid, "namespace": "ns", "name": "rj"}
    if rv is not None:
        meta["resourceVersion"] = rv
    if generation is not None:
        meta["generation"] = generation
    out: dict[str, Any] = {"metadata": meta, "spec": SPEC | (spec or {})}
    if status is not None:
        out["status"] = status
    return out


def job(
    *,
    conditions: list[tuple[str, str]] | None = None,
    suspend: bool = False,
    active: int = 0,
    owner: str | None = "u1",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": "j1", "name": "rj-job"}
    if owner is not None:
        meta["ownerReferences"] = [
            {"kind": "RecognitionJob", "uid": owner, "name": "rj", "controller": True}
        ]
    return {
        "metadata": meta,
        "spec": {"suspend": suspend},
        "status": {
            "active": active,
            "conditions": [{"type": t, "status": s} for t, s in conditions or []],
        },
    }


# --- cache ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rv", "expected"), [("42", 42), (None, 0), ("", 0), ("not-a-number", 0)])
def test_resource_version(rv: str | None, expected: int) -> None:
    assert resource_version(body(rv=rv)) == expected


@pytest.mark.parametrize(
    ("spec", "kueue", "suspend", "gpus"),
    [
        ({}, False, False, 1),  # the model's defaults, not hand-copied ones
        ({"queue": "lq"}, True, False, 1),
        ({"runPolicy": {"suspend": True}, "resources": {"gpus": 0}}, False, True, 0),
    ],
)
def test_spec_is_read_through_the_model(
    spec: dict[str, Any], kueue: bool, suspend: bool, gpus: int
) -> None:
    rj = CachedRJ.of(body(spec))
    assert rj.spec is not None and rj.spec_error is None
    assert (rj.kueue, rj.wants_suspend, rj.spec.resources.gpus) == (kueue, suspend, gpus)


def test_a_refused_spec_is_kept_with_its_error() -> None:
    rj = CachedRJ.of(body({"roster": [], "priority": 5000}))
    assert rj.spec is None
    assert rj.spec_error is not None and "priority" in rj.spec_error
    assert (rj.kueue, rj.wants_suspend) == (False, False)
    with pytest.raises(ValueError, match="invalid spec"):
        entry_for(rj)


@pytest.mark.parametrize(
    ("generation", "reparsed"),
    [(1, False), (2, True), (None, True)],  # same generation: the parsed spec is reused
)
def test_spec_is_parsed_once_per_generation(generation: int | None, reparsed: bool) -> None:
    first = CachedRJ.of(body(generation=1))
    later = CachedRJ.of(body({"priority": 7}, generation=generation), first)
    assert later.spec is not None
    assert (later.spec.priority == 7) is reparsed


@pytest.mark.parametrize(
    ("status", "phase", "terminal", "unwritten"),
    [
        (None, None, False, True),
        ({"phase": "Pending", "conditions": [], "attempts": 0}, Phase.PENDING, False, True),
        ({"phase": "Pending", "reason": "Suspended"}, Phase.PENDING, False, False),
        ({"phase": "Running"}, Phase.RUNNING, False, False),
        ({"phase": "Cancelled"}, Phase.CANCELLED, True, False),
        ({"phase": "Sideways"}, None, False, False),
    ],
)
def test_status_accessors(
    status: dict[str, Any] | None, phase: Phase | None, terminal: bool, unwritten: bool
) -> None:
    rj = CachedRJ.of(body(status=status))
    assert (rj.phase, rj.terminal, rj.unwritten) == (phase, terminal, unwritten)


@pytest.mark.parametrize(
    ("raw", "attempts", "final"),
    [
        (None, 0, False),
        ({"attempts": 3, "lastStatus": 503}, 3, False),
        ({"attempts": 1, "unknownField": True}, 0, True),  # not ours: never retried
    ],
)
def test_webhook_record(raw: dict[str, Any] | None, attempts: int, final: bool) -> None:
    rj = CachedRJ.of(body(status={"phase": "Failed", "webhook": raw} if raw else None))
    assert (rj.webhook.attempts, rj.webhook.final) == (attempts, final)


def _gauge(phase: str) -> float:
    return REGISTRY.get_sample_value("rollcall_recognitionjobs", {"phase": phase}) or 0.0


def test_cache_keeps_the_newest_version_and_counts_phases() -> None:
    cache = RJCache()
    new0, queued0 = _gauge("New"), _gauge("Queued")
    cache.remember(body(uid="g1", rv="5"))
    assert _gauge("New") == new0 + 1  # an RJ without status is counted too
    kept = cache.remember(body(status={"phase": "Queued"}, uid="g1", rv="7"))
    assert (_gauge("New"), _gauge("Queued")) == (new0, queued0 + 1)
    stale = cache.remember(body(uid="g1", rv="6"))  # an event older than our own write's answer
    assert stale is kept and cache.get("g1") is kept
    assert [rj.uid for rj in cache.in_phase(Phase.QUEUED)] == ["g1"]
    assert cache.forget("g1") is kept and "g1" not in cache
    assert _gauge("Queued") == queued0


# --- status writes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("phase", "status", "expected"),
    [
        ("Pending", {"reason": "JobCreated"}, None),  # no Event: one write fewer per RJ
        ("Running", {}, ("Normal", "Running", "")),
        ("Succeeded", {"reason": "Completed"}, ("Normal", "Succeeded", "Completed")),
        (
            "Failed",
            {"reason": "BadInput", "message": "no photos"},
            ("Warning", "Failed", "no photos"),
        ),
        ("Cancelled", {"reason": "JobDeleted"}, ("Warning", "Cancelled", "JobDeleted")),
    ],
)
def test_transition_event(
    phase: str, status: dict[str, Any], expected: tuple[str, str, str] | None
) -> None:
    assert transition_event(phase, status) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, None),
        ({"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z"}, 90.0),
        ({"startTime": "2026-01-01T00:00:00Z"}, 100.0),  # not completed: until now
        ({"startTime": "2026-01-01T00:00:00Z", "completionTime": "2025-12-31T23:59:00Z"}, 0.0),
    ],
)
def test_run_seconds(status: dict[str, Any], expected: float | None) -> None:
    now = parse_time("2026-01-01T00:01:40Z")
    assert run_seconds(status, now) == expected


@pytest.mark.parametrize(
    ("stamp", "expected"), [(None, 0.0), ("", 0.0), ("1970-01-01T00:01:00Z", 60.0)]
)
def test_parse_time(stamp: str | None, expected: float) -> None:
    assert parse_time(stamp) == expected


# --- Jobs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("conditions", "active", "finished", "needs_pods"),
    [
        ([], 0, False, False),
        ([], 1, False, True),
        ([("Complete", "True")], 0, True, True),
        ([("Failed", "True")], 0, True, True),
        ([("Failed", "False"), ("Suspended", "True")], 0, False, False),
    ],
)
def test_job_state(
    conditions: list[tuple[str, str]], active: int, finished: bool, needs_pods: bool
) -> None:
    got = job(conditions=conditions, active=active)
    assert (jobs.finished(got), jobs.needs_pods(got)) == (finished, needs_pods)


@pytest.mark.parametrize(
    ("owner", "rj_uid", "expected"), [("u1", "u1", True), ("u0", "u1", False), (None, "u1", False)]
)
def test_owned_by(owner: str | None, rj_uid: str, expected: bool) -> None:
    assert jobs.owned_by(job(owner=owner), rj_uid) is expected
    assert not jobs.owned_by(None, rj_uid)


# --- admission ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "trust", "the_job", "expected"),
    [
        ({}, False, None, "submit"),  # no Job yet: it waits for a slot
        ({}, False, job(), "hold"),  # its Job runs: it holds a slot
        ({}, False, job(conditions=[("Complete", "True")]), None),  # done: nothing to hold
        ({"runPolicy": {"suspend": True}}, False, job(suspend=True), None),  # parked by its RJ
        ({}, False, job(suspend=True), "submit"),  # resumed while we were down: waits
        ({"queue": "lq"}, False, job(suspend=True), "hold"),  # Kueue's Job: Kueue decides
        ({"queue": "lq"}, True, job(), None),  # trusted Kueue: not capped by rollcall
    ],
)
def test_seed_action(
    spec: dict[str, Any], trust: bool, the_job: dict[str, Any] | None, expected: str | None
) -> None:
    rj = CachedRJ.of(body(spec))
    assert seed_action(entry_for(rj, trust), the_job, rj.kueue) == expected


@pytest.mark.parametrize(
    ("status", "stamped"),
    [(None, True), ({"phase": "Queued"}, True), ({"queuedTime": "2026-01-01T00:00:00Z"}, False)],
)
def test_queued_time_is_stamped_once(status: dict[str, Any] | None, stamped: bool) -> None:
    assert ("queuedTime" in queued_extra(CachedRJ.of(body(status=status)))) is stamped
    assert "queuedTime" in queued_extra(None)


# --- folding --------------------------------------------------------------------------------------
def test_only_changes_of_the_schedulers_verdict_count() -> None:
    seen: dict[str, tuple[str, str | None]] = {}
    steps: list[tuple[tuple[str, str | None] | None, bool]] = [
        (None, False),  # scheduled at once: nothing to say
        (("Unschedulable", "0/1 nodes"), True),
        (("Unschedulable", "0/1 nodes"), False),  # the same verdict again
        (("Unschedulable", "0/2 nodes"), True),
        (None, True),  # placed at last
        (None, False),
    ]
    for verdict, changed in steps:
        assert verdict_changed(seen, "p1", verdict) is changed, verdict
    assert seen == {}


# --- progress -------------------------------------------------------------------------------------
def test_progress_writes_only_what_moved() -> None:
    rjs = [
        CachedRJ.of(body(status={"phase": "Running"}, uid="fresh")),
        CachedRJ.of(
            body(
                status={"phase": "Running", "progress": {"done": 2, "total": 5, "text": "2/5"}},
                uid="same",
            )
        ),
        CachedRJ.of(body(status={"phase": "Running"}, uid="silent")),
        CachedRJ.of(body(status={"phase": "Succeeded"}, uid="done")),
    ]
    rows: list[list[bytes | None]] = [[b"1", b"5"], [b"2", b"5"], [None, b"5"], [b"5", b"5"]]
    assert [(rj.uid, d, t) for rj, d, t in moved(rjs, rows)] == [("fresh", 1, 5)]


# --- webhooks -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "status", "due"),
    [
        (HOOK, {"phase": "Succeeded"}, True),
        ({}, {"phase": "Succeeded"}, False),  # no callback
        (HOOK, {"phase": "Running"}, False),  # not finished
        (HOOK, {"phase": "Failed", "webhook": {"attempts": 2, "lastStatus": 503}}, True),
        (HOOK, {"phase": "Failed", "webhook": {"attempts": 3}}, False),  # out of attempts
        (HOOK, {"phase": "Failed", "webhook": {"attempts": 1, "lastStatus": 404}}, False),
        (HOOK, {"phase": "Failed", "webhook": {"attempts": 1, "final": True}}, False),
        (HOOK, {"phase": "Failed", "webhook": {"attempts": 1, "delivered": True}}, False),
    ],
)
def test_delivery_due(spec: dict[str, Any], status: dict[str, Any], due: bool) -> None:
    assert delivery_due(CachedRJ.of(body(spec, status)), max_attempts=3) is due


@pytest.mark.parametrize(
    ("attempt", "result", "delivered", "final"),
    [
        (1, Attempt(200, None, retry=False), True, True),
        (1, Attempt(503, "HTTP 503", retry=True), False, False),
        (3, Attempt(503, "HTTP 503", retry=True), False, True),  # the last attempt
        (1, Attempt(None, "refused", retry=False), False, True),
    ],
)
def test_attempt_record(attempt: int, result: Attempt, delivered: bool, final: bool) -> None:
    got = attempt_record(attempt, result, max_attempts=3)
    assert (got["attempts"], got["delivered"], got["final"]) == (attempt, delivered, final)
    assert got["lastStatus"] == result.status and got["lastError"] == result.error


def test_kopf_builds_and_reads_no_diff_base() -> None:
    """No change handler: kopf needs no essence of any body, not even one a past run stored."""
    raw = body(status={"phase": "Running"})
    raw["metadata"]["annotations"] = {"rollcall.io/last-handled-configuration": '{"spec": {}}'}
    rj = kopf.Body(raw)  # type: ignore[arg-type]  # a plain dict is what kopf hands handlers
    storage = NoDiffBase(prefix="rollcall.io", key="last-handled-configuration")
    assert kopf.AnnotationsDiffBaseStorage.build(storage, body=rj)  # kopf's own: a copy
    assert storage.build(body=rj) == {}
    assert storage.fetch(body=rj) is None


@pytest.mark.parametrize(
    ("essence", "cleared"),
    [
        ({}, {}),  # NoDiffBase's empty essence: returned as it is, no copy
        (
            {"metadata": {"annotations": {"rollcall.io/handler": "{}", "other": "x"}}},
            {"metadata": {"annotations": {"other": "x"}}},
        ),
    ],
)
def test_progress_keys_are_cleared_from_essences(
    essence: dict[str, Any], cleared: dict[str, Any]
) -> None:
    storage = QuickProgress(prefix="rollcall.io")
    given: kopf.BodyEssence = essence  # type: ignore[assignment]
    got = storage.clear(essence=given)
    assert got == cleared
    assert (got is given) == (not essence)


async def test_the_operators_client_reads_the_proxy_environment_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp re-read proxy variables and ~/.netrc in a thread on every apiserver call."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    kube = await Kube.open(OperatorSettings(kubeconfig=kubeconfig))
    try:
        rest = kube.api.rest_client
        assert rest.pool_manager.trust_env is False
        assert rest.proxy == "http://proxy.internal:3128"
    finally:
        await kube.close()
