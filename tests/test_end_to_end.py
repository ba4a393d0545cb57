"""The whole chain on real photos: REST or kubectl -> RecognitionJob -> operator -> Job -> pod running
``rollcall-job`` -> results in Redis -> RJ status -> API.

Every component runs as its own process (hack/stack.py): the Go-built control plane, redis-server,
the operator and the API from their console scripts, and the node agent running the Job pods'
command. Nothing is scripted: the attendance comes from the ONNX models on the photos.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import httpx
import numpy as np
import pytest
import yaml
from kubernetes import client

from localk8s import ensure_tools, wait_for
from rollcall_job.faces import load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_operator.builder import job_name
from stack import Stack, running_stack

pytestmark = [pytest.mark.models, pytest.mark.k8s, pytest.mark.redis, pytest.mark.slow]

NS = "school-north"
OTHER_NS = "school-south"
CLASS = "grade7-b"
GROUP = [f"s-{i:02d}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = build_models()
    with running_stack(
        tmp_path_factory.mktemp("e2e"),
        schools={"north": [NS], "south": [OTHER_NS]},
        model_dir=model_dir,
    ) as s:
        enrollment = s.claim(NS, "enrollment")
        _enrollment_photos(enrollment, model_dir)
        today = s.claim(NS, "class-photos") / "period-1"
        today.mkdir(parents=True)
        shutil.copy(photo("t1.jpg"), today / "group.jpg")
        shutil.copy(photo("obama3.jpg"), today / "portrait.jpg")
        shutil.copy(photo("mask_blue.jpg"), today / "no-face.jpg")
        (today / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        yield s


def _enrollment_photos(folder: Path, model_dir: Path) -> None:
    """Obama and Biden from their own photos; the group's six from transformed crops of t1.jpg."""
    for sid, names in {"s-obama": ["obama.jpg", "obama2.jpg"], "s-biden": ["biden.jpg"]}.items():
        (folder / sid).mkdir(parents=True)
        for name in names:
            shutil.copy(photo(name), folder / sid / name)
    group = read_image(photo("t1.jpg"))
    faces = sorted(load_engine(model_dir).detect(group), key=lambda f: f.box[0])
    assert len(faces) == len(GROUP)
    for sid, face in zip(GROUP, faces, strict=True):
        x1, y1, x2, y2 = (int(v) for v in face.box)
        pad = (x2 - x1) // 2
        crop = group[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad]
        variant = cv2.flip(cv2.resize(crop, None, fx=1.4, fy=1.4), 1)
        variant = np.clip(variant.astype(np.float32) * 0.85, 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", variant, [cv2.IMWRITE_JPEG_QUALITY, 75])
        assert ok
        (folder / sid).mkdir(parents=True)
        (folder / sid / "crop.jpg").write_bytes(jpeg.tobytes())


def _http(stack: Stack, school: str = "north") -> httpx.Client:
    return httpx.Client(
        base_url=stack.api_url,
        headers={"Authorization": f"Bearer {stack.api_keys[school]}"},
        timeout=30,
    )


def _wait_phase(http: httpx.Client, job_id: str, phases: set[str], timeout: float = 120) -> Any:
    seen: dict[str, Any] = {}

    def done() -> bool:
        resp = http.get(f"/v1/recognition-jobs/{job_id}")
        resp.raise_for_status()
        seen["job"] = resp.json()
        return bool(seen["job"]["phase"] in phases)

    wait_for(done, f"job {job_id} in {phases}", timeout=timeout, interval=0.5)
    return seen["job"]


@pytest.fixture(scope="module")
def enrolled(stack: Stack) -> dict[str, Any]:
    with _http(stack) as http:
        resp = http.post(
            "/v1/enrollments", json={"classCode": CLASS, "images": {"claimName": "enrollment"}}
        )
        assert resp.status_code == 202, resp.text
        job = _wait_phase(http, resp.json()["id"], {"Succeeded", "Failed"})
    assert job["phase"] == "Succeeded", job
    return job  # type: ignore[no-any-return]


ROSTER = [*GROUP, "s-obama", "s-biden", "s-never-enrolled"]


def _identify(
    http: httpx.Client,
    sub_path: str,
    class_code: str = CLASS,
    roster: list[str] = ROSTER,
    model: str = "default",
) -> str:
    """POST an attendance job over the class photos in ``sub_path``; returns its id."""
    resp = http.post(
        "/v1/recognition-jobs",
        json={
            "classCode": class_code,
            "images": {"claimName": "class-photos", "subPath": sub_path},
            "roster": roster,
            "model": model,
        },
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _check_attendance(results: dict[str, Any]) -> None:
    attendance = results["attendance"]
    present = {p["student"]: p for p in attendance["present"]}
    assert set(present) == {*GROUP, "s-obama"}
    assert {present[s]["photo"] for s in GROUP} == {"group.jpg"}
    assert present["s-obama"]["photo"] == "portrait.jpg"
    assert attendance["absent"] == ["s-biden"]
    assert attendance["not_enrolled"] == ["s-never-enrolled"]
    summary = results["summary"]
    assert summary["faces"] == 7 and summary["present"] == 7 and summary["errors"] == 1
    assert [f["photo"] for f in summary["failed"]] == ["corrupt.jpg"]


def test_enroll_then_take_attendance_through_the_api(
    stack: Stack, enrolled: dict[str, Any]
) -> None:
    assert enrolled["summary"]["enrolled"] == len(GROUP) + 2
    with _http(stack) as http:
        job = _wait_phase(http, _identify(http, "period-1"), {"Succeeded", "Failed"})
        assert job["phase"] == "Succeeded", job
        assert job["progress"] == {"done": 4, "total": 4}
        assert job["summary"]["present"] == 7
        results = http.get(f"/v1/recognition-jobs/{job['id']}/results")
        assert results.status_code == 200, results.text
        _check_attendance(results.json())
    # Another school cannot see the job at all.
    with _http(stack, "south") as other:
        assert other.get(f"/v1/recognition-jobs/{job['id']}").status_code == 404


# Embedders a job picks with spec.model (build.SELECTABLE_EMBEDDERS besides the default), each
# with galleries of its own: the class enrolled with the default has none for them yet.
@pytest.mark.parametrize("model", ["mobilefacenet-sirius-int8-v2", "dlib-resnet-v1"])
def test_a_selectable_model_enrols_its_own_gallery_and_takes_the_same_attendance(
    stack: Stack, enrolled: dict[str, Any], model: str
) -> None:
    with _http(stack) as http:
        job = _wait_phase(http, _identify(http, "period-1", model=model), {"Succeeded", "Failed"})
        assert job["phase"] == "Failed", job
        assert f"has no gallery '{CLASS}' for model '{model}': enrol the class" in job["message"]
        resp = http.post(
            "/v1/enrollments",
            json={"classCode": CLASS, "images": {"claimName": "enrollment"}, "model": model},
        )
        assert resp.status_code == 202, resp.text
        enrolment = _wait_phase(http, resp.json()["id"], {"Succeeded", "Failed"})
        assert enrolment["phase"] == "Succeeded", enrolment
        assert enrolment["summary"]["enrolled"] == len(GROUP) + 2
        job = _wait_phase(http, _identify(http, "period-1", model=model), {"Succeeded", "Failed"})
        assert job["phase"] == "Succeeded", job
        results = http.get(f"/v1/recognition-jobs/{job['id']}/results")
        assert results.status_code == 200, results.text
        _check_attendance(results.json())
        assert results.json()["summary"]["model"] == model


def test_kubectl_apply_runs_the_same_job_and_the_api_reads_it(
    stack: Stack, enrolled: dict[str, Any]
) -> None:
    manifest = {
        "apiVersion": "rollcall.io/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": {"name": "period-1-by-kubectl", "namespace": NS},
        "spec": {
            "classCode": CLASS,
            "images": {"claimName": "class-photos", "subPath": "period-1"},
            "roster": ROSTER,
        },
    }
    path = stack.workdir / "rj.yaml"
    path.write_text(yaml.safe_dump(manifest))
    kubectl = [str(ensure_tools() / "kubectl"), "--kubeconfig", str(stack.cp.kubeconfig)]
    subprocess.run([*kubectl, "apply", "-f", str(path)], check=True, capture_output=True)

    def phase() -> str:
        out = subprocess.run(
            [*kubectl, "get", "rj", "period-1-by-kubectl", "-n", NS, "-o", "json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return str(json.loads(out).get("status", {}).get("phase", ""))

    wait_for(lambda: phase() in ("Succeeded", "Failed"), "kubectl-applied RJ to finish", 120)
    assert phase() == "Succeeded"
    table = subprocess.run(
        [*kubectl, "get", "rj", "period-1-by-kubectl", "-n", NS],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    header, row = table.splitlines()[:2]
    assert "PHASE" in header and "PRESENT" in header
    assert "Succeeded" in row and "4/4" in row
    with _http(stack) as http:
        results = http.get("/v1/recognition-jobs/period-1-by-kubectl/results")
        assert results.status_code == 200, results.text
        _check_attendance(results.json())


def test_a_gallery_never_enrolled_fails_as_bad_input_without_retry(stack: Stack) -> None:
    with _http(stack) as http:
        job_id = _identify(http, "period-1", class_code="grade9-nobody", roster=["s-01"])
        job = _wait_phase(http, job_id, {"Succeeded", "Failed"})
    assert job["phase"] == "Failed"
    rj = cast(  # a custom object is untyped JSON
        dict[str, Any],
        client.CustomObjectsApi(stack.api).get_namespaced_custom_object(
            "rollcall.io", "v1alpha1", NS, "recognitionjobs", job["id"]
        ),
    )
    assert rj["status"]["attempts"] == 1
    assert "gallery" in (job["message"] or "").lower()


def test_cancel_stops_a_running_job_and_deletes_its_job_and_pods(
    stack: Stack, enrolled: dict[str, Any]
) -> None:
    """DELETE while the recognition process runs: the RJ, its Job and its pod all go away."""
    batch, core = client.BatchV1Api(stack.api), client.CoreV1Api(stack.api)
    big = stack.workdir / "claims" / NS / "class-photos" / "whole-term"
    big.mkdir(parents=True, exist_ok=True)
    for i in range(150):  # long enough to be caught running on 2 cores
        shutil.copy(photo("t1.jpg"), big / f"group-{i:03d}.jpg")
    with _http(stack) as http:
        job_id = _identify(http, "whole-term")

        def running_pods() -> list[client.V1Pod]:
            pods = core.list_namespaced_pod(
                NS, label_selector=f"rollcall.io/rj-name={job_id}"
            ).items
            return [p for p in pods if p.status is not None and p.status.phase == "Running"]

        job = _wait_phase(http, job_id, {"Running", "Succeeded", "Failed"}, timeout=60)
        assert job["phase"] == "Running", job
        wait_for(lambda: _job_name(stack, job_id) and running_pods(), "the job's pod to run")
        name = _job_name(stack, job_id)
        assert http.delete(f"/v1/recognition-jobs/{job_id}").status_code in (202, 204)

        def gone() -> bool:
            if http.get(f"/v1/recognition-jobs/{job_id}").status_code != 404:
                return False
            if batch.list_namespaced_job(NS, field_selector=f"metadata.name={name}").items:
                return False
            selector = f"job-name={name}"
            return not core.list_namespaced_pod(NS, label_selector=selector).items

        wait_for(gone, "the RJ, its Job and its pod to be deleted", timeout=90)


def _job_name(stack: Stack, rj: str) -> str:
    obj = cast(  # a custom object is untyped JSON
        dict[str, Any],
        client.CustomObjectsApi(stack.api).get_namespaced_custom_object(
            "rollcall.io", "v1alpha1", NS, "recognitionjobs", rj
        ),
    )
    return str(obj.get("status", {}).get("jobName") or "")


INT8 = "mobilefacenet-sirius-int8-v2"
FLOAT = "mobilefacenet-sirius-v1"  # the image's built-in default, by its card id


@pytest.fixture(scope="module")
def int8_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A CPU-only cluster's set-up: the operator's default_model (chart: models.default) is the
    int8 card; two students enrolled from their own photos, one of them in today's photo."""
    with running_stack(
        tmp_path_factory.mktemp("e2e-int8"),
        schools={"north": [NS]},
        model_dir=build_models(),
        operator_env={"ROLLCALL_OPERATOR_DEFAULT_MODEL": INT8},
    ) as s:
        enrollment = s.claim(NS, "enrollment")
        for sid, names in {
            "s-obama": ["obama.jpg", "obama2.jpg"],
            "s-biden": ["biden.jpg"],
        }.items():
            (enrollment / sid).mkdir(parents=True)
            for name in names:
                shutil.copy(photo(name), enrollment / sid / name)
        today = s.claim(NS, "class-photos") / "period-1"
        today.mkdir(parents=True)
        shutil.copy(photo("obama3.jpg"), today / "portrait.jpg")
        yield s


def test_the_cluster_default_model_runs_rjs_that_name_none_and_keeps_galleries_apart(
    int8_cluster: Stack,
) -> None:
    """The switch as a school lives it: a class enrolled under the float card (what ``default``
    meant before) has no int8 gallery, so attendance naming no card fails with the "enrol the
    class again" error; enrolled again naming no card, the int8 card takes it, and says so."""
    roster = ["s-obama", "s-biden"]
    batch = client.BatchV1Api(int8_cluster.api)

    def enrol(http: httpx.Client, **model: str) -> Any:
        body = {"classCode": CLASS, "images": {"claimName": "enrollment"}, **model}
        resp = http.post("/v1/enrollments", json=body)
        assert resp.status_code == 202, resp.text
        return _wait_phase(http, resp.json()["id"], {"Succeeded", "Failed"})

    def identify(http: httpx.Client) -> Any:  # no model in the request: the CRD's "default"
        resp = http.post(
            "/v1/recognition-jobs",
            json={
                "classCode": CLASS,
                "images": {"claimName": "class-photos", "subPath": "period-1"},
                "roster": roster,
            },
        )
        assert resp.status_code == 202, resp.text
        return _wait_phase(http, resp.json()["id"], {"Succeeded", "Failed"})

    def job_model(job: Any) -> str:
        assert job["spec"]["model"] == "default"  # the RJ as stored: it named no card
        manifest: Any = batch.read_namespaced_job(job_name(job["id"]), NS)
        env = {e.name: e.value for e in manifest.spec.template.spec.containers[0].env}
        rj = cast(  # a custom object is untyped JSON
            dict[str, Any],
            client.CustomObjectsApi(int8_cluster.api).get_namespaced_custom_object(
                "rollcall.io", "v1alpha1", NS, "recognitionjobs", job["id"]
            ),
        )
        assert rj["status"].get("model") == env["ROLLCALL_MODEL"]  # kubectl get rj -o wide
        return str(env["ROLLCALL_MODEL"])

    with _http(int8_cluster) as http:
        assert enrol(http, model=FLOAT)["phase"] == "Succeeded"
        job = identify(http)
        assert job["phase"] == "Failed", job
        assert f"has no gallery '{CLASS}' for model '{INT8}': enrol the class" in job["message"]
        assert job_model(job) == INT8

        enrolment = enrol(http)
        assert enrolment["phase"] == "Succeeded", enrolment
        assert job_model(enrolment) == INT8
        job = identify(http)
        assert job["phase"] == "Succeeded", job
        results = http.get(f"/v1/recognition-jobs/{job['id']}/results").json()
        assert results["summary"]["model"] == INT8
        assert [p["student"] for p in results["attendance"]["present"]] == ["s-obama"]
        assert results["attendance"]["absent"] == ["s-biden"]
