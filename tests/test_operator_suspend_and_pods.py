"""A suspended Job frees its cap slot; the pod watch refreshes the scheduler's reasons in status.

Pure rules first (``job_slot``, ``schedule_verdict``), table-driven; then both on the real stack:
the operator process, the real scheduler and the node agent's GPUs.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from localk8s import wait_for
from nodeagent import NodeAgent
from rollcall_operator.cache import CachedRJ
from rollcall_operator.pods import schedule_verdict
from rollcall_operator.queue import entry_for, job_slot
from test_operator_lifecycle import (  # noqa: F401  (fixtures used by name)
    K,
    Operator,
    Script,
    k,
    photos,
    rj_body,
    script,
    start_operator,
)


def _rj(suspend: bool, queue: str | None = None) -> CachedRJ:
    spec: dict[str, Any] = {
        "classCode": "c",
        "images": {"claimName": "p"},
        "roster": ["s1"],
        "runPolicy": {"suspend": suspend},
    }
    if queue:
        spec["queue"] = queue
    meta = {"uid": "u1", "namespace": "ns", "name": "rj", "creationTimestamp": None}
    return CachedRJ.of({"metadata": meta, "spec": spec})


@pytest.mark.parametrize(
    ("rj_suspended", "job_suspended", "kueue", "expected"),
    [
        (False, False, False, "hold"),  # running: holds its slot
        (True, True, False, "park"),  # suspended by its RJ: the slot goes to the next RJ
        (True, False, False, "park"),  # suspended while the operator was down: park (and suspend)
        (False, True, False, "wait"),  # resumed: waits for a slot, resumed on admission
        (False, True, True, "hold"),  # Kueue holds it back: Kueue's quota, not ours, decides
        (True, True, True, "hold"),
    ],
)
def test_job_slot(rj_suspended: bool, job_suspended: bool, kueue: bool, expected: str) -> None:
    entry = entry_for(_rj(rj_suspended, "q" if kueue else None))
    assert job_slot(entry, job_suspended, kueue) == expected


def _pod(conditions: list[dict[str, str]], node: str | None = None, deleting: bool = False) -> Any:
    meta: dict[str, Any] = {"uid": "p1", "name": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"conditions": conditions}}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}  # fmt: skip


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod([]), None),  # just created: the scheduler has not looked yet
        (_pod([UNSCHEDULABLE]), ("Unschedulable", UNSCHEDULABLE["message"])),
        (_pod([{**UNSCHEDULABLE, "reason": ""}]), ("Unschedulable", UNSCHEDULABLE["message"])),
        (
            _pod([{**UNSCHEDULABLE, "reason": "SchedulingGated", "message": "gated"}]),
            ("SchedulingGated", "gated"),
        ),
        (_pod([{"type": "PodScheduled", "status": "True"}], node="n"), None),
        (_pod([UNSCHEDULABLE], node="n"), None),  # bound meanwhile: the condition is stale
        (_pod([UNSCHEDULABLE], deleting=True), None),
    ],
)
def test_schedule_verdict(pod: Any, expected: tuple[str, str | None] | None) -> None:
    assert schedule_verdict(pod) == expected


def _queue_size(op: Operator) -> dict[str, int]:
    """The operator's own queue, from its liveness probe (kopf's JSON of the probe handlers)."""
    with urllib.request.urlopen(op.health, timeout=2) as resp:
        got: dict[str, int] = json.load(resp)["queue"]
    return got


@pytest.mark.k8s
@pytest.mark.slow
def test_suspending_the_running_rj_frees_its_slot_and_resuming_waits_for_one(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
) -> None:  # fmt: skip
    op = start_operator(max_running=1)
    k.create(rj_body("first", "hold"))
    k.phase_is("first", "Running")
    k.create(rj_body("second", "hold"))
    assert k.phase_is("second", "Queued")["reason"] == "WaitingForCapacity"

    k.patch_spec("first", {"runPolicy": {"suspend": True}})
    k.phase_is("second", "Running")  # the suspended Job gave its slot away
    assert k.phase_is("first", "Pending")["reason"] == "Suspended"
    assert k.job("first").spec.suspend is True

    k.patch_spec("first", {"runPolicy": {"suspend": False}})
    # back in line behind the running "second": the operator queues it and keeps its Job suspended
    wait_for(lambda: _queue_size(op) == {"waiting": 1, "running": 1}, "first waits for a slot")
    assert k.job("first").spec.suspend is True
    assert k.status("first")["phase"] == "Pending"

    script.release("second")
    k.phase_is("second", "Succeeded")
    wait_for(lambda: k.job("first").spec.suspend is False, "first resumed once the slot freed")
    k.phase_is("first", "Running")
    script.release("first")
    k.phase_is("first", "Succeeded")
    assert sorted(j.metadata.name for j in k.jobs()) == ["first", "second"]


def _scheduled_condition(rig: K, rj: str) -> Any:
    pods = rig.pods(rj)
    assert len(pods) == 1
    return next(c for c in pods[0].status.conditions or [] if c.type == "PodScheduled")


def _cordon(rig: K, node: NodeAgent, on: bool) -> None:
    rig.core.patch_node(node.name, {"spec": {"unschedulable": on}})


@pytest.mark.k8s
@pytest.mark.slow
def test_unschedulable_reason_follows_the_scheduler_and_moves_on_when_a_gpu_frees(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
    gpu_node: NodeAgent,
) -> None:  # fmt: skip
    """The scheduler's verdict changes while the Job does not: only the pod says so.

    First the node is cordoned (the pod cannot go anywhere), then uncordoned while every GPU is
    taken (now it is the GPUs): the RJ's status must follow both, then move on once a GPU frees.
    """
    start_operator()
    every_gpu = {"gpus": gpu_node.gpus, "cpu": "100m", "memory": "64Mi"}
    k.create(rj_body("all-gpus", "hold", resources=every_gpu))
    k.phase_is("all-gpus", "Running", timeout=90)

    def shows_the_schedulers_words(words: str) -> bool:
        status, cond = k.status("one-more"), _scheduled_condition(k, "one-more")
        return bool(
            cond.status == "False"
            and words in (cond.message or "")
            and status.get("reason") == cond.reason == "Unschedulable"
            and status.get("message") == cond.message
        )

    _cordon(k, gpu_node, True)
    try:
        k.create(rj_body("one-more", "hold"))
        wait_for(lambda: shows_the_schedulers_words("unschedulable"),
                 f"the cordon in status ({k.status('one-more')})")  # fmt: skip
    finally:
        _cordon(k, gpu_node, False)
    wait_for(lambda: shows_the_schedulers_words(gpu_node.gpu_resource),
             f"the GPUs in status ({k.status('one-more')})", timeout=60)  # fmt: skip
    assert k.status("one-more")["phase"] == "Pending"

    script.release("all-gpus")
    k.phase_is("all-gpus", "Succeeded")
    k.phase_is("one-more", "Running", timeout=90)
    assert k.status("one-more").get("reason") != "Unschedulable"
    script.release("one-more")
    k.phase_is("one-more", "Succeeded")
