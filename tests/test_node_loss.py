"""A node dies while its pod runs: the RJ is retried on another node and succeeds once.

The pure rules first, table-driven: the bounded not-ready/unreachable tolerations the builder gives
job pods, and when the operator gives up on a pod stranded on an unreachable node
(``rollcall_operator.nodeloss``). Then the whole chain on the real control plane with four node
agents: one is killed like a machine (no heart-beats, nothing more written), the node lifecycle
controller marks its Node unreachable, the taint-eviction controller evicts the pod once its
toleration runs out, the pod stays Terminating (no kubelet confirms), the operator fails it, the Job
controller replaces it on another node, and the real recognition job enrols the class there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
import redis
from kubernetes import client

from localk8s import local_volume, wait_for
from nodeagent import NodePool, Outcome, ProcessRunner
from rollcall_contract import keys, labels
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.progress import redis_sink
from rollcall_job.results import read_results
from rollcall_operator import handlers
from rollcall_operator.activity import Peering
from rollcall_operator.admission import MANAGED_LABEL_SELECTOR
from rollcall_operator.builder import NODE_LOST_TAINTS, build_job
from rollcall_operator.nodeloss import failed_status, left_over, stranded_at, unreachable
from rollcall_operator.runtime import Runtime
from rollcall_operator.settings import OperatorSettings
from test_operator_ha import LIFETIME, PEERING, _fake_active_peer, _peering
from test_operator_lifecycle import K, Operator, k, start_operator  # noqa: F401  (fixtures)

IMAGE_MODEL_DIR = "/opt/rollcall/models"  # where the job image keeps its models (hack/stack.py)
STUDENTS = {"s-obama": ["obama.jpg", "obama2.jpg"], "s-biden": ["biden.jpg"]}
PHOTOS = sum(len(v) for v in STUDENTS.values())


# --- pure rules ------------------------------------------------------------------------------


def _rj(gpus: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "rj", "namespace": "ns", "uid": "u1"},
        "spec": {"classCode": "C", "images": {"claimName": "p"}, "roster": ["a"],
                 "resources": {"gpus": gpus}},
    }  # fmt: skip


def _lost(tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    return {t["key"]: t for t in tolerations if t["key"] in NODE_LOST_TAINTS}


def _toleration(key: str, seconds: int) -> dict[str, Any]:
    return {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}


@pytest.mark.parametrize(
    ("settings", "gpus", "expected"),
    [
        (OperatorSettings(), 1, {t: _toleration(t, 60) for t in NODE_LOST_TAINTS}),
        (OperatorSettings(), 0, {t: _toleration(t, 60) for t in NODE_LOST_TAINTS}),
        (OperatorSettings(node_lost_toleration_seconds=5), 1,
         {t: _toleration(t, 5) for t in NODE_LOST_TAINTS}),
        (OperatorSettings(node_lost_toleration_seconds=None), 1, {}),  # the cluster's 300 s
        # a cluster's own toleration for one taint is kept; the other still gets the bound
        (OperatorSettings(tolerations=[_toleration(NODE_LOST_TAINTS[1], 900)]), 1,
         {NODE_LOST_TAINTS[0]: _toleration(NODE_LOST_TAINTS[0], 60),
          NODE_LOST_TAINTS[1]: _toleration(NODE_LOST_TAINTS[1], 900)}),
    ],
)  # fmt: skip
def test_job_pods_tolerate_a_lost_node_for_a_bounded_time(
    settings: OperatorSettings, gpus: int, expected: dict[str, Any]
) -> None:
    pod = build_job(_rj(gpus), settings)["spec"]["template"]["spec"]
    tolerations = pod.get("tolerations", [])
    assert _lost(tolerations) == expected
    assert len([t for t in tolerations if t["key"] in NODE_LOST_TAINTS]) == len(expected)


DELETED_AT = "2026-12-01T08:00:00Z"


def _pod(deleted: str | None = DELETED_AT, phase: str = "Running", node: str | None = "n1",
         conditions: list[dict[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7"}
    if deleted:
        meta["deletionTimestamp"] = deleted
    status = {"phase": phase, "conditions": conditions or []}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod(), dt.datetime(2026, 12, 1, 8, 1, tzinfo=dt.UTC)),  # deletion (incl. grace) + 60 s
        (_pod(deleted=None), None),  # not being deleted: a running pod is left alone
        (_pod(phase="Failed"), None),  # already ended: the Job has counted it
        (_pod(phase="Succeeded"), None),
        (_pod(node=None), None),  # never bound: PodGC removes unscheduled terminating pods
    ],
)
def test_when_a_terminating_pod_may_be_given_up_on(
    pod: dict[str, Any], expected: dt.datetime | None
) -> None:
    assert stranded_at(pod, 60) == expected


def _ours(pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` with the status this operator gives a stranded pod."""
    return {**pod, "status": failed_status(pod, "2026-12-01T08:02:00Z")}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_ours(_pod()), True),  # marked Failed by us, never removed: remove it
        (_ours(_pod(deleted=None)), False),  # not being deleted: nothing to finish
        (_pod(phase="Failed"), False),  # failed by its kubelet or the Job: not ours to remove
        (_pod(), False),  # still Running: stranded_at's case, not this one
        (_ours(_pod(node=None)), False),  # never bound
    ],
)
def test_a_pod_we_failed_but_did_not_remove_is_finished_off(
    pod: dict[str, Any], expected: bool
) -> None:
    assert left_over(pod) is expected


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (
            {
                "spec": {
                    "taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
                }
            },
            True,
        ),
        # not-ready: the kubelet still reports, so it will finish its own pods
        (
            {"spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}},
            False,
        ),
        ({"spec": {}}, False),
        (None, False),  # the Node is gone: PodGC's orphan path fails its pods itself
    ],
)
def test_only_an_unreachable_node_counts_as_lost(
    node: dict[str, Any] | None, expected: bool
) -> None:
    assert unreachable(node) is expected


EVICTED = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
           "message": "Taint manager: deleting due to NoExecute taint"}  # fmt: skip
READY_FALSE = {"type": "Ready", "status": "False"}


@pytest.mark.parametrize(
    ("conditions", "disruption_reason"),
    [
        ([READY_FALSE, EVICTED], "DeletionByTaintManager"),  # the eviction's own condition kept
        ([READY_FALSE], "NodeLost"),  # none yet: ours, so the Job's Ignore rule still applies
    ],
)
def test_a_stranded_pod_fails_as_a_disruption(
    conditions: list[dict[str, str]], disruption_reason: str
) -> None:
    status = failed_status(_pod(conditions=conditions), "2026-12-01T08:02:00Z")
    assert status["phase"] == "Failed" and status["reason"] == "NodeLost"
    by_type = {c["type"]: c for c in status["conditions"]}
    assert len(by_type) == len(status["conditions"]) == 2  # one of each type, others kept
    assert by_type["Ready"] == READY_FALSE
    assert by_type["DisruptionTarget"]["status"] == "True"
    assert by_type["DisruptionTarget"]["reason"] == disruption_reason


# --- the real chain ----------------------------------------------------------------------------


class FirstTryDiesWithItsNode:
    """Every pod runs the real job, except the RJ's first: it writes progress as the job does
    (1 of the photos done), then runs until its node dies. ``holding`` is set once it does."""

    def __init__(self, real: ProcessRunner, redis_url: str, rj: str) -> None:
        self.real, self.redis_url, self.rj = real, redis_url, rj
        self.holding = threading.Event()
        self.nodes: list[str] = []  # where each of the RJ's pods ran
        self.lock = threading.Lock()

    def __call__(self, pod: client.V1Pod, cancelled: threading.Event) -> Outcome:
        meta, spec = pod.metadata, pod.spec
        assert meta is not None and meta.labels is not None and spec is not None
        if meta.labels[labels.RJ_NAME] != self.rj:
            return self.real(pod, cancelled)
        with self.lock:
            self.nodes.append(str(spec.node_name))
            first = len(self.nodes) == 1
        if not first:
            return self.real(pod, cancelled)
        conn = redis.Redis.from_url(self.redis_url)
        try:
            redis_sink(conn, str(meta.namespace), meta.labels[labels.RJ_UID], 600)(1, PHOTOS)
        finally:
            conn.close()
        self.holding.set()
        cancelled.wait()
        return Outcome(137, "killed")


def _enrol_rj(name: str, class_code: str) -> dict[str, Any]:
    return {
        "apiVersion": "rollcall.io/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": {"name": name},
        "spec": {
            "mode": "enroll",
            "classCode": class_code,
            "images": {"claimName": "enrolment"},
            "resources": {"gpus": 1, "cpu": "100m", "memory": "64Mi"},
        },
    }


def _count(items: list[str], value: str) -> int:
    return sum(1 for item in items if item == value)


@pytest.mark.k8s
@pytest.mark.redis
@pytest.mark.models
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_node_dies_under_its_pod_and_the_rj_succeeds_once_on_another_node(
    k: K, start_operator: Callable[..., Operator], node_pool: Callable[..., NodePool],  # noqa: F811
    namespace: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path,
) -> None:  # fmt: skip
    folder = tmp_path / "enrolment"
    for student, files in STUDENTS.items():
        (folder / student).mkdir(parents=True)
        for name in files:
            (folder / student / name).write_bytes(photo(name).read_bytes())
    local_volume(k.core, namespace, "enrolment", folder, read_only=True)
    k.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "rollcall-redis"}, "stringData": {"url": redis_url}}
    )
    real = ProcessRunner(
        k.core.api_client, tmp_path / "node", extra_path=[str(Path(sys.executable).parent)],
        image_paths={IMAGE_MODEL_DIR: build_models()},
    )  # fmt: skip
    runner = FirstTryDiesWithItsNode(real, redis_url, "roll")
    pool = node_pool(runner, nodes=4, gpus=2)
    start_operator(
        node_selector=pool.node_selector, tolerations=pool.tolerations,
        command=["rollcall-job"], extra_env={"model_dir": IMAGE_MODEL_DIR},
        max_gpus=1,  # one GPU RJ at a time: the next one needs the lost pod's slot back
        node_lost_toleration_seconds=5, lost_pod_timeout_seconds=5,
    )  # fmt: skip

    roll = k.create(_enrol_rj("roll", "grade7-b"))
    assert runner.holding.wait(120), f"the first pod never ran ({k.status('roll')})"
    wait_for(lambda: k.status("roll").get("progress", {}).get("text") == f"1/{PHOTOS}",
             f"partial progress in status ({k.status('roll')})")  # fmt: skip
    k.create(_enrol_rj("next", "grade7-c"))
    assert k.phase_is("next", "Queued")["reason"] == "WaitingForCapacity"

    victim = pool.agent(runner.nodes[0])
    first_pod = k.pods("roll")[0]
    killed = time.monotonic()
    victim.kill()

    def node_lost() -> bool:
        node = k.core.read_node(victim.name)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        return ready.status == "Unknown" and unreachable(node.to_dict())

    wait_for(node_lost, f"{victim.name} marked unreachable", timeout=90)
    marked = time.monotonic()

    def evicted() -> bool:
        pod = k.core.read_namespaced_pod(first_pod.metadata.name, namespace)
        return pod.metadata.deletion_timestamp is not None and any(
            c.type == "DisruptionTarget" and c.status == "True" for c in pod.status.conditions
        )

    wait_for(evicted, "the lost node's pod evicted by taint-based eviction", timeout=90)
    evicted_at = time.monotonic()
    assert k.status("roll")["phase"] == "Running"  # the pod is still Terminating, not Failed

    done = k.phase_is("roll", "Succeeded", timeout=180)
    print(f"after the kill: node unreachable {marked - killed:.0f} s, pod evicted "
          f"{evicted_at - killed:.0f} s, RJ Succeeded {time.monotonic() - killed:.0f} s")  # fmt: skip
    assert len(runner.nodes) == 2 and runner.nodes[1] != victim.name, runner.nodes
    assert done["summary"]["enrolled"] == len(STUDENTS), done["summary"]
    assert done["progress"]["text"] == f"{PHOTOS}/{PHOTOS}"
    uid = roll["metadata"]["uid"]
    results = read_results(redis_client, namespace, uid)
    assert results is not None
    shared = set(results["summary"]) & set(done["summary"])  # status keeps the counts only
    assert "enrolled" in shared
    assert {f: results["summary"][f] for f in shared} == {f: done["summary"][f] for f in shared}
    pattern = keys.tenant_pattern(namespace)
    result_keys = [key.decode() for key in redis_client.scan_iter(match=pattern)
                   if uid in key.decode() and key.decode().endswith(":results")]  # fmt: skip
    assert result_keys == [keys.job_results(namespace, uid)]  # one result set, no stray staging
    job = k.job("roll")
    assert job.status.succeeded == 1
    # the operator marked the lost pod Failed and removed it (once the Job controller let go)
    wait_for(lambda: [p.status.phase for p in k.pods("roll")] == ["Succeeded"],
             f"only the retry's pod left ({[p.metadata.name for p in k.pods('roll')]})")  # fmt: skip
    assert _count(k.events("roll"), "Succeeded") == 1
    print(f"roll: attempts={done.get('attempts')} job failed={job.status.failed} "
          f"pods ran on {runner.nodes}")  # fmt: skip

    # the lost pod's GPU slot came back: the next RJ runs and succeeds
    assert k.phase_is("next", "Succeeded", timeout=120)["summary"]["enrolled"] == len(STUDENTS)
    assert all(a.gpu_peak <= a.gpus for a in pool.agents)


# --- a hand-over between replicas --------------------------------------------------------------
# One operator replica in-process (the Runtime kopf's handlers call into), peered as the chart
# peers them. Its pod events go through handlers.pod_event, as kopf delivers them.


def _hold(pod: client.V1Pod, cancelled: threading.Event) -> Outcome:
    """A job pod that runs until its node dies."""
    cancelled.wait()
    return Outcome(137, "killed")


@pytest.fixture
def stranded_pod(k: K, node_pool: Callable[..., NodePool], namespace: str) -> str:  # noqa: F811
    """A pod of ours on a node that died under it: Running, evicted, Terminating for ever.

    Made from the operator's own Job template with a 0 s node-lost toleration, bound to a node
    agent that is then killed; the node lifecycle controller marks the Node unreachable and the
    taint-eviction controller deletes the pod at once, which no kubelet is left to confirm.
    """
    # a second node lives on: with every node of a zone down, the node lifecycle controller
    # assumes its own network is at fault and evicts nothing
    pool = node_pool(_hold, nodes=2, gpus=1)
    victim = pool.agents[0]
    rj = {**_rj(), "metadata": {"name": "rj", "namespace": namespace, "uid": "u1"}}
    template = build_job(rj, OperatorSettings(node_lost_toleration_seconds=0))["spec"]["template"]
    name = "stranded"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": name},
            "spec": {**template["spec"], "nodeName": victim.name}}  # fmt: skip
    # the namespace's default ServiceAccount, which pod admission looks up, may not exist yet
    wait_for(lambda: k.core.create_namespaced_pod(namespace, body), "the pod created")
    wait_for(lambda: k.core.read_namespaced_pod(name, namespace).status.phase == "Running",
             "the pod running on its node")  # fmt: skip
    victim.kill()
    wait_for(lambda: unreachable(k.core.read_node(victim.name).to_dict()),
             f"{victim.name} marked unreachable", timeout=90)  # fmt: skip
    wait_for(lambda: k.core.read_namespaced_pod(name, namespace).metadata.deletion_timestamp,
             "the pod evicted", timeout=90)  # fmt: skip
    return name


Replica = Callable[[int], contextlib.AbstractAsyncContextManager[tuple[Runtime, kopf.Memo]]]


@pytest.fixture
def replica(
    kubeconfig: Path, crds: list[str], k8s_api: client.ApiClient, namespace: str, redis_url: str
) -> Replica:
    """``replica(timeout)``: an operator replica peered in ``namespace`` (priority 0, so a live
    fake peer outranks it), started as the startup handler starts it, with its memo as kopf's
    handlers get it. The peering object (kopf's CRD is among ``crds``) is made here."""
    _peering(k8s_api, namespace)

    @contextlib.asynccontextmanager
    async def start(timeout: int) -> AsyncIterator[tuple[Runtime, kopf.Memo]]:
        settings = OperatorSettings(kubeconfig=kubeconfig, redis_url=redis_url,
                                    namespaces=[namespace], lost_pod_timeout_seconds=timeout)  # fmt: skip
        rt = await Runtime.open(settings)
        memo = kopf.Memo()
        memo["rt"] = rt
        try:
            await rt.start(Peering(PEERING, "operator-b", 0, LIFETIME, (namespace,)))
            yield rt, memo
        finally:
            await rt.close()

    return start


# kopf's decorator types the handler as its own callback protocol; called here as kopf calls it
POD_EVENT = cast(Callable[..., Awaitable[None]], handlers.pod_event)


async def _pod_event(memo: kopf.Memo, rt: Runtime, namespace: str, name: str) -> str:
    """Deliver the pod as it is now to the pod handler, as kopf would; its uid."""
    pod = await rt.kube.read_pod(namespace, name)
    assert pod is not None
    body = kopf.Body(pod)  # type: ignore[arg-type]  # a plain dict is what kopf hands handlers
    await POD_EVENT(type="MODIFIED", body=body, memo=memo)
    uid: str = pod["metadata"]["uid"]
    return uid


async def _until(predicate: Callable[[], object], what: str, timeout: float = 90) -> None:
    """``wait_for`` that lets the replica's tasks run meanwhile (a condition, not a timing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_replica_that_stands_down_stops_following_stranded_pods(
    stranded_pod: str, replica: Replica, k8s_api: client.ApiClient, namespace: str
) -> None:
    """Following a pod ends in a write (the pod marked Failed): a stand-by must not keep any."""
    async with replica(3600) as (rt, memo):
        assert rt.active  # no other peer
        uid = await _pod_event(memo, rt, namespace, stranded_pod)
        followers = dict(rt.lost.tasks)
        assert list(followers) == [uid]  # due in an hour: still waiting

        _fake_active_peer(k8s_api, namespace, present=True)
        assert not await rt.settle()
        assert all(task.done() for task in followers.values())
        assert rt.lost.tasks == {}
        await _pod_event(memo, rt, namespace, stranded_pod)  # an event still on its way
        assert rt.lost.tasks == {}


@pytest.mark.slow
async def test_a_replica_that_takes_over_fails_a_pod_stranded_while_it_stood_by(
    stranded_pod: str, replica: Replica, k8s_api: client.ApiClient, namespace: str,
    k: K, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:  # fmt: skip
    """The active replica died with the node: no event of the pod reaches the one taking over."""
    _fake_active_peer(k8s_api, namespace, present=True)  # the replica that died, not yet expired
    async with replica(0) as (rt, _):
        assert not rt.active
        pod = k.core.read_namespaced_pod(stranded_pod, namespace)
        assert pod.status.phase == "Running"  # left alone while this replica stood by
        # what activation lists: here this namespace; a cluster-wide operator's, every one
        everywhere = await rt.kube.list_pods(None, MANAGED_LABEL_SELECTOR)
        assert stranded_pod in [p["metadata"]["name"] for p in everywhere]

        caplog.set_level(logging.WARNING, logger="rollcall.operator.nodeloss")
        _fake_active_peer(k8s_api, namespace, present=False)
        assert await rt.settle()

        def failed() -> bool:
            return any(getattr(r, "pod", None) == stranded_pod and "marked Failed" in r.message
                       for r in caplog.records)  # fmt: skip

        await _until(failed, "the stranded pod marked Failed")
        await _until(lambda: not [p for p in k.core.list_namespaced_pod(namespace).items
                                  if p.metadata.name == stranded_pod], "the pod removed")  # fmt: skip


@pytest.mark.slow
async def test_a_replica_that_takes_over_removes_a_pod_left_failed_and_terminating(
    stranded_pod: str, replica: Replica, namespace: str, k: K,  # noqa: F811
) -> None:  # fmt: skip
    """The replica that died (or stood down) marked the pod Failed but never removed it."""
    node = k.core.read_namespaced_pod(stranded_pod, namespace).spec.node_name
    status = failed_status({"spec": {"nodeName": node}}, "2026-12-01T08:02:00Z")
    k.core.patch_namespaced_pod_status(stranded_pod, namespace, {"status": status})
    left = k.core.read_namespaced_pod(stranded_pod, namespace)
    assert left.status.phase == "Failed" and left.metadata.deletion_timestamp  # as left behind
    async with replica(3600) as (rt, _):  # a stranded Running pod would wait an hour
        assert rt.active
        await _until(lambda: not [p for p in k.core.list_namespaced_pod(namespace).items
                                  if p.metadata.name == stranded_pod], "the pod removed")  # fmt: skip
