"""Operator safety on the real control plane: SSRF-refused callbacks, webhook attempts counted
before they are sent, per-namespace signing secrets, and a ResourceQuota refusal in RJ status.

The operator runs as a process (fixtures from test_operator_lifecycle); receivers are loopback HTTP
servers reached by the name ``localhost`` (the CRD refuses literal non-public addresses).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localk8s import local_volume, restricted_namespace, wait_for
from nodeagent import NodeAgent
from rollcall_operator.webhook import DENIED, verify
from test_operator_egress import PeakRSS, Server
from test_operator_lifecycle import (  # noqa: F401  (fixtures)
    K,
    Operator,
    Receiver,
    Script,
    k,
    photos,
    rj_body,
    script,
    start_operator,
)

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def webhook_status(rjs: K, name: str) -> dict[str, Any]:
    return rjs.status(name).get("webhook") or {}


def signing_secret(rjs: K, value: str = "s") -> None:
    """The namespace's own signing Secret, under the name the test operator is configured with."""
    rjs.core.create_namespaced_secret(rjs.ns, {
        "metadata": {"name": "hook"}, "stringData": {"hmac": value}})  # fmt: skip


def delivered(rjs: K, name: str) -> Callable[[], bool]:
    return lambda: webhook_status(rjs, name).get("delivered") is True


@pytest.mark.parametrize(
    "url",
    ["https://169.254.169.254/latest/meta-data/", "https://127.0.0.1:6443/", "https://[::1]/x",
     "https://10.0.0.7/hook", "https://[::ffff:7f00:1]/x", "https://2130706433/", "https://0.0.0.0/",
     "https://user:pw@hooks.example.org/", "ftp://hooks.example.org/"],
)  # fmt: skip
def test_crd_refuses_non_public_literal_callback_hosts(
    k: K,  # noqa: F811
    crds: list[str],
    url: str,
) -> None:
    with pytest.raises(ApiException) as err:
        k.create(rj_body("ssrf", callback={"url": url}))
    assert err.value.status == 422, err.value.body
    assert "callback.url" in str(err.value.body) or "spec.callback" in str(err.value.body)


def test_crd_accepts_public_callbacks_and_drops_secret_names(
    k: K,  # noqa: F811
    crds: list[str],
) -> None:
    created = k.create(rj_body("pub", callback={
        "url": "https://hooks.example.org/rollcall?school=a",
        "secretRef": {"name": "another-schools-secret", "key": "k"}}))  # fmt: skip
    assert created["spec"]["callback"] == {"url": "https://hooks.example.org/rollcall?school=a"}


def test_loopback_callback_is_never_contacted_without_the_allowlist(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
) -> None:  # fmt: skip
    receiver = Receiver()
    try:
        signing_secret(k)
        start_operator(webhook_allow_cidrs="[]", webhook_allow_hosts="[]")
        k.create(rj_body("probe", callback={"url": receiver.url}))
        k.phase_is("probe", "Succeeded")
        wait_for(lambda: webhook_status(k, "probe").get("final") is True, "webhook given up")
        hook = webhook_status(k, "probe")
        assert hook == {**hook, "delivered": False, "attempts": 1, "lastError": DENIED}
        assert hook.get("lastStatus") is None
        assert receiver.posts == []
    finally:
        receiver.close()


def test_an_attempt_is_counted_before_it_is_sent(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
) -> None:  # fmt: skip
    """A POST that kills the operator (OOM) is on record, so restarts cannot repeat it forever."""
    gate = Server(hold_first=True)
    try:
        signing_secret(k)
        op = start_operator(webhook_max_attempts="2")
        k.create(rj_body("crash", callback={"url": f"http://localhost:{gate.port}/hook"}))
        assert gate.arrived.wait(60), op.logs()
        hook = webhook_status(k, "crash")
        assert (hook.get("attempts"), hook.get("delivered")) == (1, False)  # before any answer
        op.kill()  # dies mid-POST, as an OOM kill would
        gate.release.set()
        start_operator(webhook_max_attempts="2")
        wait_for(delivered(k, "crash"), "second attempt")
        assert webhook_status(k, "crash")["attempts"] == 2 and len(gate.requests) == 2
    finally:
        gate.close()


def test_a_huge_answer_leaves_the_operator_flat_and_the_next_job_runs(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
) -> None:  # fmt: skip
    """The review's crash loop: a 600 MiB answer grew the operator by 1.2 GiB until OOM-killed."""
    flood = Server(body_bytes=200 << 20)
    try:
        signing_secret(k)
        op = start_operator()
        assert op.proc is not None
        with PeakRSS(op.proc.pid) as rss:
            k.create(rj_body("flood", callback={"url": f"http://localhost:{flood.port}/h"}))
            wait_for(delivered(k, "flood"), "delivered despite the flood")
        assert rss.grown < 64 << 20, f"operator peak RSS grew {rss.grown >> 20} MiB"
        assert webhook_status(k, "flood")["attempts"] == 1 and len(flood.requests) == 1
        k.create(rj_body("next"))
        assert k.phase_is("next", "Succeeded")["summary"]["present"] == 2
    finally:
        flood.close()


def test_each_namespace_signs_with_its_own_secret_only(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
    k8s_api: client.ApiClient, node_agent: NodeAgent, tmp_path: Path,
) -> None:  # fmt: skip
    other = f"{k.ns[:50]}-b"
    restricted_namespace(k8s_api, other)
    receiver = Receiver()
    try:
        kb = K(k8s_api, other)
        local_volume(kb.core, other, "photos", tmp_path / "b", read_only=True)
        node_agent.use(other, script)
        signing_secret(k, "secret-a")
        signing_secret(kb, "secret-b")
        start_operator(namespaces=json.dumps([k.ns, other]))
        k.create(rj_body("a", callback={"url": receiver.url}))
        kb.create(rj_body("b", callback={"url": receiver.url}))
        for kk, name in ((k, "a"), (kb, "b")):
            wait_for(delivered(kk, name), f"{name} delivered")
        signed = {
            json.loads(body)["namespace"]: (headers, body) for headers, body in receiver.posts
        }
        assert set(signed) == {k.ns, other}
        for ns, mine, theirs in (
            (k.ns, b"secret-a", b"secret-b"),
            (other, b"secret-b", b"secret-a"),
        ):
            headers, body = signed[ns]
            stamp, sig = headers["X-Rollcall-Timestamp"], headers["X-Rollcall-Signature"]
            assert verify(mine, stamp, body, sig) and not verify(theirs, stamp, body, sig)
        # a namespace without its own Secret gets no signed callback, whoever else has one
        k.core.delete_namespaced_secret("hook", k.ns)
        before = len(receiver.posts)
        k.create(rj_body("unsigned", callback={"url": receiver.url}))
        k.phase_is("unsigned", "Succeeded")
        wait_for(lambda: "secret" in (webhook_status(k, "unsigned").get("lastError") or ""),
                 "missing secret recorded")  # fmt: skip
        assert len(receiver.posts) == before
    finally:
        receiver.close()
        node_agent.use(other, None)
        with contextlib.suppress(ApiException):
            k.core.delete_namespace(other)


def test_a_quota_refusal_shows_in_status_and_is_retried(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
) -> None:  # fmt: skip
    k.core.create_namespaced_resource_quota(k.ns, {
        "metadata": {"name": "jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})  # fmt: skip
    op = start_operator(quota_retry_seconds="0.5", quota_retry_max_seconds="1")
    k.create(rj_body("quota"))
    wait_for(lambda: k.status("quota").get("reason") == "QuotaExceeded",
             f"QuotaExceeded in status (now {k.status('quota')})")  # fmt: skip
    status = k.status("quota")
    assert status["phase"] == "Queued"
    assert "exceeded quota" in status["message"] and "count/jobs.batch" in status["message"]
    assert k.jobs() == []
    k.core.patch_namespaced_resource_quota(
        "jobs", k.ns, {"spec": {"hard": {"count/jobs.batch": "5"}}}
    )
    assert k.phase_is("quota", "Succeeded")["summary"]["present"] == 2
    assert op.logs().count("refused (QuotaExceeded)") < 50  # backed off, not a hot loop


def test_resources_over_the_operator_bounds_fail_the_rj(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,  # noqa: F811
) -> None:  # fmt: skip
    start_operator(max_cpu_per_job="4", max_memory_per_job="8Gi", max_gpus_per_namespace="2")
    k.create(rj_body("greedy", resources={"gpus": 1, "cpu": "999k", "memory": "900Ti"}))
    k.create(rj_body("wide", resources={"gpus": 3, "cpu": "1", "memory": "1Gi"}))
    k.create(rj_body("fine"))
    greedy = k.phase_is("greedy", "Failed")
    assert greedy["reason"] == "ResourcesExceedLimit"
    assert "cpu=999k" in greedy["message"] and "memory=900Ti" in greedy["message"]
    assert "gpus=3" in k.phase_is("wide", "Failed")["message"]
    k.phase_is("fine", "Succeeded")
    assert [j.metadata.name for j in k.jobs()] == ["fine"]
