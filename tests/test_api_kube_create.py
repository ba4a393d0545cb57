"""The API's RecognitionJob create (its own POST, not the generated client's) on a real apiserver:
what it stores, and each apiserver refusal mapped to the status a client can act on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localk8s import ControlPlane
from rollcall_api.app import kube_client
from rollcall_api.errors import ApiError
from rollcall_api.kube import RecognitionJobs, new_job_name
from rollcall_api.settings import Settings

SPEC: dict[str, Any] = {
    "classCode": "7B-maths",
    "images": {"claimName": "photos", "subPath": "2026-11-27/p1"},
    "roster": ["s-001", "s-002"],
}


async def _jobs(kubeconfig: Path) -> AsyncIterator[RecognitionJobs]:
    api_client = await kube_client(Settings(kubeconfig=kubeconfig))
    try:
        yield RecognitionJobs(api_client, timeout=10)
    finally:
        await api_client.close()


@pytest.fixture
async def jobs(kubeconfig: Path, crds: list[str]) -> AsyncIterator[RecognitionJobs]:
    async for made in _jobs(kubeconfig):
        yield made


async def test_create_stores_the_job_and_returns_the_apiservers_object(
    jobs: RecognitionJobs, namespace: str, k8s_api: client.ApiClient
) -> None:
    name = new_job_name()
    labels, annotations = {"rollcall.io/mode": "identify"}, {"rollcall.io/school": "north"}
    made = await jobs.create(namespace, name, SPEC, labels, annotations)
    stored: Any = client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
        "rollcall.io", "v1alpha1", namespace, "recognitionjobs", name
    )
    assert made["metadata"]["uid"] == stored["metadata"]["uid"]
    assert made["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert stored["metadata"]["labels"] == labels
    assert stored["metadata"]["annotations"] == annotations
    assert stored["spec"]["roster"] == SPEC["roster"]
    assert made["spec"] == stored["spec"]  # defaults filled, as the generated call returned


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("duplicate name", 409, "already exists"),
        ("schema refuses the spec", 422, "rejected by the apiserver"),
        ("no such namespace", 404, "not found"),
    ],
)
async def test_apiserver_refusals_keep_their_statuses(
    jobs: RecognitionJobs, namespace: str, case: str, status: int, message: str
) -> None:
    name, spec, ns = new_job_name(), SPEC, namespace
    if case == "duplicate name":
        await jobs.create(ns, name, spec, {}, {})
    elif case == "schema refuses the spec":
        spec = {**SPEC, "roster": "not-a-list"}
    else:
        ns = f"{namespace}-absent"
    with pytest.raises(ApiError) as refused:
        await jobs.create(ns, name, spec, {}, {})
    assert refused.value.status == status, refused.value.message
    assert message in refused.value.message


async def test_a_forbidden_create_is_a_502_and_an_unreachable_apiserver_a_503(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, crds: list[str]
) -> None:
    """401/403 mean the API's own account is wrong (not the caller's fault): 502."""
    stranger = control_plane.kubeconfig_for(
        "alice", control_plane.user_tokens["alice"], tmp_path / "alice"
    )
    async for jobs in _jobs(stranger):
        with pytest.raises(ApiError) as refused:
            await jobs.create(namespace, new_job_name(), SPEC, {}, {})
        assert refused.value.status == 502
    gone = tmp_path / "gone"
    gone.write_text(
        stranger.read_text().replace(control_plane.server, "https://127.0.0.1:1"),
        encoding="utf-8",
    )
    async for jobs in _jobs(gone):
        with pytest.raises(ApiError) as unreachable:
            await jobs.create(namespace, new_job_name(), SPEC, {}, {})
        assert unreachable.value.status == 503
