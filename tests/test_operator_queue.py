"""Admission order and caps of the operator's queue (pure; the real-cluster test is elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from rollcall_operator.cache import CachedRJ
from rollcall_operator.queue import AdmissionQueue, Entry, Slot, entry_for

# the fields the contract model requires; each case adds what it is about
BASE_SPEC: dict[str, Any] = {"classCode": "c", "images": {"claimName": "p"}, "roster": ["s1"]}


def e(
    uid: str,
    *,
    ns: str = "a",
    priority: int = 0,
    created: float = 0.0,
    capped: bool = True,
    suspended: bool = False,
    timeout: int | None = None,
    gpus: int = 1,
) -> Entry:
    return Entry(uid, ns, uid, priority, created, capped, suspended, timeout, gpus)


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


def test_trusted_kueue_entries_bypass_the_cap() -> None:
    q = AdmissionQueue(max_running=1, max_gpus=1)
    q.hold("busy", "a")
    q.submit(e("kueue", capped=False))
    assert uids(q.admissible()) == ["kueue"]
    assert "busy" in q.running and "kueue" not in q.running


@pytest.mark.parametrize(
    ("body_spec", "trust", "capped", "gpus"),
    [
        ({"resources": {"gpus": 0}}, False, True, 0),  # CPU jobs still take a Job slot
        ({"queue": "lq"}, False, True, 1),  # naming a queue is not enough ...
        ({"queue": "lq"}, True, False, 1),  # ... unless the operator trusts Kueue's quotas
        ({"resources": {"gpus": 4}}, True, True, 4),
        ({}, False, True, 1),
    ],
)
def test_what_counts_against_the_caps(
    body_spec: dict[str, Any], trust: bool, capped: bool, gpus: int
) -> None:
    body = {"metadata": {"uid": "u", "namespace": "n", "name": "r"}, "spec": BASE_SPEC | body_spec}
    got = entry_for(CachedRJ.of(body), trust_kueue=trust)
    assert (got.capped, got.gpus) == (capped, gpus)


def test_gpu_cap_counts_gpus_not_jobs() -> None:
    q = AdmissionQueue(max_gpus=4)
    q.submit(e("big", gpus=3, created=1))
    q.submit(e("two", gpus=2, created=2))
    q.submit(e("cpu", gpus=0, created=3))
    assert uids(q.admissible()) == ["big"]  # 3 + 2 > 4, and nobody jumps the queue
    reason, message = q.why_waiting(q.waiting["two"])
    assert reason == "WaitingForCapacity" and "3/4 GPUs" in message
    q.release("big")
    assert uids(q.admissible()) == ["two", "cpu"]


def test_gpus_zero_takes_a_job_slot() -> None:
    q = AdmissionQueue(max_running_per_namespace=1)
    q.submit(e("cpu1", gpus=0, created=1))
    q.submit(e("cpu2", gpus=0, created=2))
    assert uids(q.admissible()) == ["cpu1"]
    assert q.why_waiting(q.waiting["cpu2"])[0] == "WaitingForNamespaceCapacity"


def test_namespace_gpu_cap() -> None:
    q = AdmissionQueue(max_gpus_per_namespace=2)
    q.hold("running", "a", gpus=2)
    q.submit(e("a1", ns="a", gpus=1, created=1))
    q.submit(e("b1", ns="b", gpus=2, created=2))
    assert uids(q.admissible()) == ["b1"]
    reason, message = q.why_waiting(q.waiting["a1"])
    assert reason == "WaitingForNamespaceCapacity" and "2/2 GPUs" in message and "a" in message


def test_priority_cannot_jump_another_school() -> None:
    q = AdmissionQueue(max_gpus=1)
    q.submit(e("b-old", ns="b", created=1))
    q.submit(e("a-urgent", ns="a", priority=1000, created=2))
    q.submit(e("a-low", ns="a", priority=-5, created=0))
    assert uids(q.admissible()) == ["b-old"]  # a's 1000 only reorders a's own RJs
    q.release("b-old")
    assert uids(q.admissible()) == ["a-urgent"]
    q.release("a-urgent")
    assert uids(q.admissible()) == ["a-low"]


def test_schools_are_served_round_robin_not_by_burst() -> None:
    q = AdmissionQueue(max_gpus=4)
    for i in range(6):
        q.submit(e(f"a{i}", ns="a", created=float(i)))  # school a submits a burst first
    q.submit(e("b0", ns="b", created=10.0))
    q.submit(e("c0", ns="c", created=11.0))
    got = uids(q.admissible())
    assert sorted(got) == ["a0", "a1", "b0", "c0"]
    assert got.index("b0") < got.index("a1") and got.index("c0") < got.index("a1")


def test_schools_tied_in_a_burst_take_turns() -> None:
    """Same load, same creation second: the school served longest ago goes next, not the first name."""
    q = AdmissionQueue(max_gpus=1)
    for school in ("c", "a", "b"):
        for i in range(2):
            q.submit(e(f"{school}{i}", ns=school, created=5.0))
    order: list[str] = []
    for _ in range(6):
        (got,) = q.admissible()
        order.append(got.namespace)
        q.release(got.uid)
    assert order[:3] == sorted(order[:3]) and set(order[:3]) == {"a", "b", "c"}
    assert order[3:] == order[:3]  # a full round before any school's second turn


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
        "spec": BASE_SPEC
        | {
            "priority": 3,
            "resources": {"gpus": 1},
            "queue": "lq",
            "runPolicy": {"suspend": True, "queueTimeoutSeconds": 60},
        },
    }
    rj = CachedRJ.of(body)
    got = entry_for(rj)
    assert (got.priority, got.capped, got.suspended, got.timeout) == (3, True, True, 60)
    assert not entry_for(rj, trust_kueue=True).capped
    assert got.created == 1795773600.0


def _recount(q: AdmissionQueue) -> tuple[dict[str, int], dict[str, int]]:
    jobs: dict[str, int] = {}
    gpus: dict[str, int] = {}
    for slot in q.running.values():
        jobs[slot.namespace] = jobs.get(slot.namespace, 0) + 1
        gpus[slot.namespace] = gpus.get(slot.namespace, 0) + slot.gpus
    return jobs, gpus


@pytest.mark.parametrize(
    "steps",
    [
        [("hold", "x", "a", 2), ("hold", "x", "b", 1)],  # held again elsewhere: counted once
        [("hold", "x", "a", 1), ("release", "x"), ("release", "x")],  # a double release
        [("submit", "y", "a", 3), ("admit",), ("hold", "y", "a", 1), ("release", "y")],
        [("submit", "y", "a", 1), ("submit", "z", "b", 4), ("admit",), ("release", "z")],
    ],
)
def test_usage_counters_follow_the_slots(steps: list[tuple[Any, ...]]) -> None:
    """The per-namespace counts kept in step with ``running`` equal a recount after each step."""
    q = AdmissionQueue(max_gpus=8)
    for step in steps:
        if step[0] == "hold":
            q.hold(step[1], step[2], step[3])
        elif step[0] == "release":
            q.release(step[1])
        elif step[0] == "submit":
            q.submit(e(step[1], ns=step[2], gpus=step[3]))
        else:
            q.admissible()
        jobs, gpus = q._usage()
        assert ({k: v for k, v in jobs.items() if v}, {k: v for k, v in gpus.items() if v}) == (
            _recount(q)
        )


def test_a_queue_made_with_slots_counts_them() -> None:
    q = AdmissionQueue(max_running=1, running={"s": Slot("a", 1)})
    q.submit(e("x"))
    assert q.admissible() == []
    assert q.why_waiting(q.waiting["x"])[0] == "WaitingForCapacity"
