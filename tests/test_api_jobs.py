"""The REST API end to end against the real apiserver and Redis: what a school system relies on."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
from fastapi import FastAPI
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from apirig import free_port, serve_in_thread, write_key_file
from rollcall_api.app import create_app
from rollcall_api.logs import JsonFormatter, RequestIdFilter
from rollcall_api.schemas import JobRequest
from rollcall_api.service import fingerprint
from rollcall_api.settings import Settings
from rollcall_contract import keys
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_job.results import write_results

BODY: dict[str, Any] = {
    "classCode": "7B-maths",
    "images": {"claimName": "photos", "subPath": "2026-11-27/period-1"},
    "roster": ["s-001", "s-002", "s-003"],
    "matching": {"threshold": 0.55, "topK": 2},
    "resources": {"gpus": 1, "cpu": "2", "memory": "4Gi"},
}


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: dict[str, str]
    ns: str
    other: str
    settings: Settings
    app: FastAPI

    def auth(self, school: str = "north") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[school]}"}


@pytest.fixture
def other_namespace(k8s_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(k8s_api)
    name = f"t-other-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture
def api_settings(
    tmp_path: Path,
    kubeconfig: Path,
    redis_url: str,
    crds: list[str],
    namespace: str,
    other_namespace: str,
) -> tuple[Settings, dict[str, str]]:
    issued = write_key_file(
        tmp_path / "keys.yaml",
        {
            "north": [namespace],
            "south": [other_namespace],
            "district": [namespace, other_namespace],
        },
    )
    settings = Settings(
        kubeconfig=kubeconfig,
        keys_file=tmp_path / "keys.yaml",
        redis_url=redis_url,
        keys_reload_seconds=0,
        events_poll_seconds=0.2,
        metrics_port=free_port(),
    )
    return settings, issued


@pytest.fixture
async def api(
    api_settings: tuple[Settings, dict[str, str]], namespace: str, other_namespace: str
) -> AsyncIterator[Api]:
    settings, issued = api_settings
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield Api(http, issued, namespace, other_namespace, settings, app)


def rjs(k8s_api: client.ApiClient, ns: str) -> list[dict[str, Any]]:
    listed = cast(
        dict[str, Any],
        client.CustomObjectsApi(k8s_api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL),
    )
    return cast(list[dict[str, Any]], listed["items"])


def get_rj(k8s_api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return cast(
        dict[str, Any],
        client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name
        ),
    )


def set_status(k8s_api: client.ApiClient, ns: str, name: str, status: dict[str, Any]) -> None:
    """What the operator would write; done here as the admin, through the status subresource."""
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": status}
    )


async def submit(
    api: Api, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await api.http.post(
        "/v1/recognition-jobs", json=body or BODY, headers={**api.auth(), **(headers or {})}
    )


async def test_post_records_the_job_in_the_callers_namespace(
    api: Api, k8s_api: client.ApiClient
) -> None:
    resp = await submit(api)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["namespace"] == api.ns and job["phase"] == "Pending"
    assert resp.headers["location"] == f"/v1/recognition-jobs/{job['id']}"
    assert job["links"]["events"] == f"/v1/recognition-jobs/{job['id']}/events"

    rj = get_rj(k8s_api, api.ns, job["id"])
    assert rj["metadata"]["uid"] == job["uid"]
    spec = rj["spec"]
    assert spec["mode"] == "identify" and spec["classCode"] == "7B-maths"
    assert spec["images"] == BODY["images"] and spec["roster"] == BODY["roster"]
    assert spec["matching"] == {"threshold": 0.55, "topK": 2}
    assert spec["resources"] == BODY["resources"]
    labels = rj["metadata"]["labels"]
    assert labels["rollcall.io/class"] == "7B-maths"
    assert labels["app.kubernetes.io/managed-by"] == "rollcall-api"
    assert rj["metadata"]["annotations"]["rollcall.io/school"] == "north"
    assert rj["metadata"]["annotations"]["rollcall.io/request-id"] == resp.headers["x-request-id"]
    assert rjs(k8s_api, api.other) == []


async def test_enrollment_creates_an_enroll_mode_job(api: Api, k8s_api: client.ApiClient) -> None:
    body = {"classCode": "7B-maths", "images": {"claimName": "photos", "subPath": "enrol"}}
    resp = await api.http.post("/v1/enrollments", json=body, headers=api.auth())
    assert resp.status_code == 202, resp.text
    assert get_rj(k8s_api, api.ns, resp.json()["id"])["spec"]["mode"] == "enroll"
    # The same through the jobs endpoint's mode field; enrollments refuse identify mode.
    resp = await submit(api, {**body, "mode": "enroll"})
    assert resp.status_code == 202 and resp.json()["mode"] == "enroll"
    resp = await api.http.post(
        "/v1/enrollments", json={**body, "mode": "identify"}, headers=api.auth()
    )
    assert resp.status_code == 422
    assert len(rjs(k8s_api, api.ns)) == 2


async def test_status_progress_and_summary_read_back(
    api: Api, k8s_api: client.ApiClient, redis_client: redis.Redis
) -> None:
    job = (await submit(api)).json()
    assert job["model"] is None  # no Job yet: the operator has not chosen the card
    running = {"phase": "Running", "progress": {"done": 3, "total": 10},
               "model": "mobilefacenet-sirius-int8-v2"}  # fmt: skip
    set_status(k8s_api, api.ns, job["id"], running)
    got = (await api.http.get(f"/v1/recognition-jobs/{job['id']}", headers=api.auth())).json()
    assert got["phase"] == "Running" and got["progress"] == {"done": 3, "total": 10}
    assert got["model"] == "mobilefacenet-sirius-int8-v2"  # the card, whatever spec.model says

    # The job's own progress in Redis is fresher than the RJ status while it runs.
    redis_client.hset(keys.job_progress(api.ns, job["uid"]), mapping={"done": 7, "total": 10})
    got = (await api.http.get(f"/v1/recognition-jobs/{job['id']}", headers=api.auth())).json()
    assert got["progress"] == {"done": 7, "total": 10}

    summary = {"images": 10, "faces": 31, "matched": 28, "unknown": 3, "present": 3, "absent": 0}
    set_status(
        k8s_api,
        api.ns,
        job["id"],
        {
            "phase": "Succeeded",
            "progress": {"done": 10, "total": 10},
            "summary": summary,
            "completionTime": "2026-11-27T10:00:00Z",
        },
    )
    got = (await api.http.get(f"/v1/recognition-jobs/{job['id']}", headers=api.auth())).json()
    assert got["phase"] == "Succeeded" and got["completionTime"] == "2026-11-27T10:00:00Z"
    assert {k: got["summary"][k] for k in summary} == summary


async def test_results_are_409_until_finished_then_come_from_redis(
    api: Api, k8s_api: client.ApiClient, redis_client: redis.Redis
) -> None:
    job = (await submit(api)).json()
    url = f"/v1/recognition-jobs/{job['id']}/results"
    resp = await api.http.get(url, headers=api.auth())
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_finished"

    attendance = [
        {"studentId": "s-001", "present": True, "score": 0.31},
        {"studentId": "s-002", "present": False},
    ]
    photos = [
        {"file": f"img{i}.jpg", "faces": [{"box": [1, 2, 3, 4], "match": "s-001"}]}
        for i in range(50)
    ]
    summary = {"images": 50, "faces": 50, "matched": 50, "present": 1, "absent": 1}
    # The job's own writer, with tiny chunks so the multi-part layout is exercised too.
    write_results(
        redis_client,
        api.ns,
        job["uid"],
        "a1",
        {"summary": summary, "attendance": attendance, "photos": photos},
        ttl_seconds=600,
        chunk_bytes=256,
    )
    set_status(k8s_api, api.ns, job["id"], {"phase": "Succeeded"})
    resp = await api.http.get(url, headers=api.auth())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["attendance"] == attendance and body["photos"] == photos
    assert body["summary"] == summary and body["phase"] == "Succeeded"


async def test_a_retried_post_returns_the_first_job_never_a_second(
    api: Api, k8s_api: client.ApiClient
) -> None:
    first = await submit(api, headers={"Idempotency-Key": "k-1"})
    again = await submit(api, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"

    # A burst of concurrent retries: SET NX lets exactly one create.
    burst = await asyncio.gather(
        *(submit(api, headers={"Idempotency-Key": "k-2"}) for _ in range(12))
    )
    assert {r.status_code for r in burst} == {202}
    assert len({r.json()["id"] for r in burst}) == 1
    assert len(rjs(k8s_api, api.ns)) == 2

    # Reusing a key for a different request is a client bug, not a retry.
    other = await submit(api, {**BODY, "classCode": "8C"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(rjs(k8s_api, api.ns)) == 2


async def test_cancel_deletes_the_recognition_job(api: Api, k8s_api: client.ApiClient) -> None:
    job = (await submit(api)).json()
    resp = await api.http.delete(f"/v1/recognition-jobs/{job['id']}", headers=api.auth())
    assert resp.status_code == 202 and resp.json()["id"] == job["id"]
    with pytest.raises(ApiException) as err:
        get_rj(k8s_api, api.ns, job["id"])
    assert err.value.status == 404
    resp = await api.http.get(f"/v1/recognition-jobs/{job['id']}", headers=api.auth())
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


async def test_keys_are_required_and_schools_are_isolated(
    api: Api, k8s_api: client.ApiClient
) -> None:
    resp = await api.http.post("/v1/recognition-jobs", json=BODY)
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    resp = await api.http.get("/v1/recognition-jobs", headers={"Authorization": "Bearer rk_nope"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    assert rjs(k8s_api, api.ns) == []

    job = (await submit(api)).json()
    url = f"/v1/recognition-jobs/{job['id']}"
    for method, path in [
        ("GET", url),
        ("GET", f"{url}/results"),
        ("GET", f"{url}/events"),
        ("DELETE", url),
    ]:
        resp = await api.http.request(method, path, headers=api.auth("south"))
        assert resp.status_code == 404, (method, path, resp.text)
    assert get_rj(k8s_api, api.ns, job["id"])  # south's DELETE did nothing
    listed = (await api.http.get("/v1/recognition-jobs", headers=api.auth("south"))).json()
    assert listed["items"] == []
    # North may not aim at south's namespace (and learns nothing about it).
    resp = await submit(api, {**BODY, "namespace": api.other})
    assert resp.status_code == 404
    assert rjs(k8s_api, api.other) == []

    # A district key holds both namespaces: it chooses, and finds jobs in either.
    resp = await api.http.post(
        "/v1/recognition-jobs", json={**BODY, "namespace": api.other}, headers=api.auth("district")
    )
    assert resp.status_code == 202 and resp.json()["namespace"] == api.other
    for job_id in (job["id"], resp.json()["id"]):
        got = await api.http.get(f"/v1/recognition-jobs/{job_id}", headers=api.auth("district"))
        assert got.status_code == 200


async def test_list_filters_by_class_and_phase_and_pages(
    api: Api, k8s_api: client.ApiClient
) -> None:
    ids = {}
    for i, cls in enumerate(["A1", "A1", "A1", "B2", "B2"]):
        ids[(await submit(api, {**BODY, "classCode": cls})).json()["id"]] = (i, cls)
    running = next(i for i, (_, c) in ids.items() if c == "B2")
    set_status(k8s_api, api.ns, running, {"phase": "Running"})

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (
            await api.http.get("/v1/recognition-jobs", params=params, headers=api.auth())
        ).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        if not page["continue"]:
            break
        params["continue"] = page["continue"]
    assert sorted(seen) == sorted(ids)

    a1 = (
        await api.http.get("/v1/recognition-jobs", params={"classCode": "A1"}, headers=api.auth())
    ).json()
    assert sorted(j["id"] for j in a1["items"]) == sorted(i for i, v in ids.items() if v[1] == "A1")
    run = (
        await api.http.get("/v1/recognition-jobs", params={"phase": "Running"}, headers=api.auth())
    ).json()
    assert [j["id"] for j in run["items"]] == [running]
    bad = await api.http.get(
        "/v1/recognition-jobs", params={"continue": "garbage"}, headers=api.auth()
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_continue"


async def test_errors_share_one_shape(api: Api, k8s_api: client.ApiClient) -> None:
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        (
            "POST",
            "/v1/recognition-jobs",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("POST", "/v1/recognition-jobs", {"json": {"classCode": "7B"}}, 422),
        ("POST", "/v1/recognition-jobs", {"json": {**BODY, "roster": []}}, 422),
        (
            "POST",
            "/v1/recognition-jobs",
            {"json": {**BODY, "images": {"claimName": "p", "subPath": "a/../b"}}},
            422,
        ),
        ("POST", "/v1/recognition-jobs", {"json": {**BODY, "surprise": 1}}, 422),
        ("POST", "/v1/recognition-jobs", {"content": b"x" * 300_000}, 413),
        ("GET", "/v1/recognition-jobs/NOT_A_NAME", {}, 404),
        ("GET", "/v1/recognition-jobs?limit=0", {}, 422),
        (
            "POST",
            "/v1/recognition-jobs",
            {"json": BODY, "headers": {"Idempotency-Key": "a b"}},
            400,
        ),
    ]
    for method, path, kw, status in cases:
        headers = {**api.auth(), **kw.pop("headers", {})}
        resp = await api.http.request(method, path, headers=headers, **kw)
        assert resp.status_code == status, (path, resp.text)
        err = resp.json()["error"]
        assert set(err) >= {"code", "message", "requestId"}, err
        assert err["requestId"] == resp.headers["x-request-id"]
    assert rjs(k8s_api, api.ns) == []


async def test_docs_are_served_only_when_enabled(
    api_settings: tuple[Settings, dict[str, str]],
) -> None:
    settings, _ = api_settings
    app = create_app(settings.model_copy(update={"docs_enabled": True, "metrics_port": 0}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as h:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await h.get(path)).status_code == 200, path
        assert (await h.get("/metrics")).status_code == 404


async def test_probes_metrics_and_request_ids(api: Api) -> None:
    assert (await api.http.get("/healthz")).status_code == 200
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"apiserver": "ok", "redis": "ok", "keys": "ok"}

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("rollcall_api")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        resp = await submit(api, headers={"X-Request-ID": "req-abc-123"})
    finally:
        logger.removeHandler(handler)
    assert resp.headers["x-request-id"] == "req-abc-123"
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    access = [r for r in records if r["logger"] == "rollcall_api.access"]
    assert access[-1]["request_id"] == "req-abc-123" and access[-1]["status"] == 202
    assert access[-1]["school"] == "north"
    assert api.keys["north"] not in lines.getvalue()

    # Metrics only on their own port; neither they nor the API docs are on the public one.
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert (await api.http.get(path)).status_code == 404, path
    url = f"http://127.0.0.1:{api.settings.metrics_port}/metrics"
    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(url, timeout=5).read().decode()
    )
    created = 'rollcall_api_requests_total{method="POST",route="/v1/recognition-jobs",status="202"}'
    assert created in metrics
    assert 'rollcall_api_jobs_created_total{mode="identify"} 1.0' in metrics
    assert "rollcall_api_event_loop_lag_seconds_count" in metrics
    assert 'rollcall_api_event_loop_lag_own_seconds_bucket{le="0.0065"}' in metrics


async def test_readyz_fails_when_redis_is_gone(
    api_settings: tuple[Settings, dict[str, str]],
) -> None:
    settings = api_settings[0].model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        resp = await http.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["redis"] == "unavailable"


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_events_stream_progress_and_phase_until_the_job_ends_over_http(
    api_settings: tuple[Settings, dict[str, str]],
    namespace: str,
    k8s_api: client.ApiClient,
    redis_client: redis.Redis,
) -> None:
    settings, issued = api_settings
    auth = {"Authorization": f"Bearer {issued['north']}"}
    events: list[tuple[str, dict[str, Any]]] = []
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        job = http.post("/v1/recognition-jobs", json=BODY, headers=auth).json()
        stream = http.stream("GET", f"/v1/recognition-jobs/{job['id']}/events", headers=auth)
        with stream as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            buf = ""
            # Each step happens once the stream has shown the previous one: (event, key) -> step.
            steps: dict[tuple[str, str], Callable[[], object]] = {
                ("snapshot", "Pending"): lambda: set_status(
                    k8s_api, namespace, job["id"], {"phase": "Queued"}
                ),
                ("phase", "Queued"): lambda: set_status(
                    k8s_api,
                    namespace,
                    job["id"],
                    {"phase": "Running", "progress": {"done": 0, "total": 4}},
                ),
                ("phase", "Running"): lambda: redis_client.hset(
                    keys.job_progress(namespace, job["uid"]), mapping={"done": 2, "total": 4}
                ),
                ("progress", "2"): lambda: set_status(
                    k8s_api,
                    namespace,
                    job["id"],
                    {
                        "phase": "Succeeded",
                        "progress": {"done": 4, "total": 4},
                        "summary": {"images": 4, "present": 3, "absent": 0},
                    },
                ),
            }
            for chunk in resp.iter_text():
                buf += chunk
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    for event, data in _sse(block + "\n\n"):
                        events.append((event, data))
                        step = steps.pop((event, str(data.get("phase", data.get("done")))), None)
                        if step is not None:
                            step()
    kinds = [e for e, _ in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "end"
    phases = [d["phase"] for e, d in events if e == "phase"]
    assert phases == ["Queued", "Running", "Succeeded"]
    progress = [(d["done"], d["total"]) for e, d in events if e == "progress"]
    assert (2, 4) in progress and progress[-1] == (4, 4)
    assert events[-1][1]["summary"]["present"] == 3


async def test_a_retry_after_a_failed_first_attempt_creates_the_job_once(
    api: Api, k8s_api: client.ApiClient, redis_client: redis.Redis
) -> None:
    """A first request that claimed the key but never created its job (it failed, or died)."""
    spec = (
        JobRequest.model_validate(BODY)
        .spec()
        .model_dump(by_alias=True, mode="json", exclude_none=True)
    )
    claim = json.dumps({"name": "rj-never-created", "fingerprint": fingerprint(api.ns, spec)})
    rkey = keys.idempotency(api.ns, "k-dead")
    redis_client.set(rkey, claim, ex=600)

    async def release_later() -> None:  # what the failing request does in its `except`
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis_client.delete, rkey)

    resp, _ = await asyncio.gather(
        submit(api, headers={"Idempotency-Key": "k-dead"}), release_later()
    )
    assert resp.status_code == 202 and "idempotent-replayed" not in resp.headers
    assert [rj["metadata"]["name"] for rj in rjs(k8s_api, api.ns)] == [resp.json()["id"]]
    again = await submit(api, headers={"Idempotency-Key": "k-dead"})
    assert again.json()["id"] == resp.json()["id"]

    # A key whose job was created and then cancelled: the retry must not resurrect it.
    redis_client.set(keys.idempotency(api.ns, "k-gone"), claim, ex=600)
    gone = await submit(api, headers={"Idempotency-Key": "k-gone"})
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "idempotency_key_gone"
    assert len(rjs(k8s_api, api.ns)) == 1
