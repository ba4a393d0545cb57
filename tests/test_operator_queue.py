"""Admission order and caps of the operator's queue (pure; the real-cluster test is elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from rollcall_operator.queue import AdmissionQueue, Entry, entry_for


def e(
    uid: str,
    *,
    ns: str = "a",
    priority: int = 0,
    created: float = 0.0,
    capped: bool = True,
    suspended: bool = False,
    timeout: int | None = None,
) -> Entry:
    return Entry(uid, ns, uid, priority, created, capped, suspended, timeout, {})


def uids(entries: list[Entry]) -> list[str]:
    return [x.uid for x in entries]


def test_no_cap_admits_everything_in_order() -> None:
    q = AdmissionQueue()
    for i, uid in enumerate("cab"):
        q.submit(e(uid, created=float(i)))
    assert uids(q.admissible()) == ["c", "a", "b"]
    assert not q.waiting


def test_priority_then_fifo() -> None:
    q = AdmissionQueue(max_running=2)
    q.submit(e("old-low", created=1))
    q.submit(e("new-high", priority=5, created=3))
    q.submit(e("mid-low", created=2))
    assert uids(q.admissible()) == ["new-high", "old-low"]
    assert uids(q.admissible()) == []
    assert q.why_waiting(q.waiting["mid-low"])[0] == "WaitingForCapacity"
    assert q.release("old-low")
    assert uids(q.admissible()) == ["mid-low"]


def test_global_cap_counts_jobs_seen_at_startup() -> None:
    q = AdmissionQueue(max_running=1)
    q.hold("survivor", "a")
    q.submit(e("x"))
    assert q.admissible() == []
    q.release("survivor")
    assert uids(q.admissible()) == ["x"]


def test_namespace_cap_does_not_block_other_namespaces() -> None:
    q = AdmissionQueue(max_running=10, max_running_per_namespace=1)
    q.submit(e("a1", ns="a", created=1))
    q.submit(e("a2", ns="a", created=2))
    q.submit(e("b1", ns="b", created=3))
    assert uids(q.admissible()) == ["a1", "b1"]
    reason, message = q.why_waiting(q.waiting["a2"])
    assert reason == "WaitingForNamespaceCapacity" and "namespace a" in message


@pytest.mark.parametrize("kind", ["cpu-only", "kueue"])
def test_uncapped_entries_bypass_the_cap(kind: str) -> None:
    q = AdmissionQueue(max_running=1)
    q.hold("busy", "a")
    q.submit(e(kind, capped=False))
    assert uids(q.admissible()) == [kind]
    assert "busy" in q.running and kind not in q.running


def test_suspended_waits_and_resumes() -> None:
    q = AdmissionQueue()
    q.submit(e("s", suspended=True))
    assert q.admissible() == []
    assert q.why_waiting(q.waiting["s"])[0] == "Suspended"
    q.set_suspended("s", False)
    assert uids(q.admissible()) == ["s"]


def test_queue_timeout() -> None:
    q = AdmissionQueue(max_running=1)
    q.hold("busy", "a")
    q.submit(e("t", created=100.0, timeout=10))
    q.submit(e("forever", created=100.0))
    assert q.expired(105.0) == []
    assert uids(q.expired(111.0)) == ["t"]
    assert list(q.waiting) == ["forever"]


def test_resubmitting_a_running_uid_is_ignored() -> None:
    q = AdmissionQueue(max_running=1)
    q.hold("x", "a")
    q.submit(e("x"))
    assert not q.waiting


def test_entry_for_reads_the_body() -> None:
    body: dict[str, Any] = {
        "metadata": {
            "uid": "u",
            "namespace": "n",
            "name": "r",
            "creationTimestamp": "2026-11-27T10:00:00Z",
        },
        "spec": {
            "priority": 3,
            "resources": {"gpus": 1},
            "queue": "lq",
            "runPolicy": {"suspend": True, "queueTimeoutSeconds": 60},
        },
    }
    got = entry_for(body)
    assert (got.priority, got.capped, got.suspended, got.timeout) == (3, False, True, 60)
    assert got.created == 1795773600.0
