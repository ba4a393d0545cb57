"""Erasing a student's templates and a class gallery, through the real API, apiserver and Redis.

Two schools with the same class code: an erase reaches every model's gallery of the caller's
school and the results naming the student, the next gallery read reports the student missing
(what identify lists as ``not_enrolled``), the other school's same-named class is untouched and
cannot be erased from outside (404), and each erase leaves an Event and an audit line that carry
counts, never a template.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from redis.asyncio import Redis as AsyncRedis

from apirig import api_settings, in_process
from redisrig import redis_server
from rollcall_api.erasure import Eraser, class_keys, mentions
from rollcall_api.logs import JsonFormatter
from rollcall_contract import acl, keys
from rollcall_contract.results import encode_results
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.results import read_results, write_results

MODELS = (
    GalleryMeta("dlib-resnet-v1", 4, "euclidean"),
    GalleryMeta("mobilefacenet-v1", 3, "cosine"),
)
CLASS = "7B"
ROSTER = ["s-001", "s-002", "s-010"]


# --- pure ---------------------------------------------------------------------------------------


def _fields(documents: dict[str, Any], chunk: int = 1 << 20) -> dict[str, str]:
    return dict(encode_results(documents, chunk_bytes=chunk))


@pytest.mark.parametrize(
    ("documents", "named"),
    [
        ({"attendance": {"present": [{"student": "s-001", "score": 0.4}]}}, True),
        ({"attendance": {"absent": ["s-001"], "not_enrolled": []}}, True),
        ({"students": {"s-001": {"photos": 2}}}, True),  # enrolment report: keyed by student
        ({"photos": [{"photo": "s-001/a.jpg", "used": True}]}, True),  # enrolment photo path
        ({"photos": [{"faces": [{"candidates": [{"student": "s-001"}]}]}]}, True),
        ({"attendance": {"present": [{"student": "s-0011"}], "absent": ["s-01"]}}, False),
        ({"photos": [{"photo": "class/s-001.jpg"}]}, False),  # a photo name is not the id
        ({"summary": {"present": 1}}, False),
    ],
)
def test_results_that_name_the_student_are_found(documents: dict[str, Any], named: bool) -> None:
    assert mentions(_fields(documents), "s-001") is named


def test_a_student_split_over_result_chunks_is_still_found() -> None:
    doc = {"attendance": {"absent": [f"x-{i:04d}" for i in range(200)] + ["s-001"]}}
    fields = _fields(doc, chunk=7)
    assert len(fields) > 50 and mentions(fields, "s-001")


def test_undecodable_results_count_as_naming_the_student() -> None:
    assert mentions({"summary": "{}"}, "s-001")  # no parts record: cannot prove otherwise


def test_class_keys_group_a_class_by_model_and_ignore_other_classes() -> None:
    t = "school-a"
    found = [
        keys.gallery(t, "7B", "m1"),
        keys.gallery_meta(t, "7B", "m1"),
        keys.gallery_packed(t, "7B", "m2"),
        keys.gallery(t, "7B-x", "m1"),  # another class whose name starts the same
        keys.gallery("school-b", "7B", "m3"),  # another school
        keys.gallery(t, "7B", "m1") + ":stray",
    ]
    got = class_keys(t, "7B", found)
    assert list(got) == ["m1", "m2"]
    assert got["m2"].meta == keys.gallery_meta(t, "7B", "m2")


# --- against the real stack ---------------------------------------------------------------------


@dataclass
class Schools:
    http: httpx.AsyncClient
    keys: dict[str, str]
    north: str
    south: str

    def auth(self, school: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[school]}"}


@pytest.fixture
def south_namespace(k8s_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(k8s_api)
    name = f"t-south-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture
async def schools(
    tmp_path: Path,
    kubeconfig: Path,
    redis_url: str,
    namespace: str,
    south_namespace: str,
) -> AsyncIterator[Schools]:
    schools = {"north": [namespace], "south": [south_namespace]}
    settings, issued = api_settings(tmp_path, kubeconfig, redis_url, schools)
    async with in_process(settings) as http:
        yield Schools(http, issued, namespace, south_namespace)


def enrol(r: redis.Redis, tenant: str, name: str, students: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    store = GalleryStore(r, tenant)
    for meta in MODELS:
        store.put(name, meta, {s: rng.normal(size=(2, meta.dim)) for s in students})


def gallery_ids(r: redis.Redis, tenant: str, name: str, meta: GalleryMeta) -> tuple[str, ...]:
    """What a job reads (the loader, packed copy or not); ``missing`` is its ``not_enrolled``."""
    return GalleryStore(r, tenant).load(name, meta).student_ids


def results_of(student_ids: list[str]) -> dict[str, Any]:
    return {
        "summary": {"present": len(student_ids)},
        "attendance": {
            "present": [
                {"student": s, "photo": "p1.jpg", "face": i} for i, s in enumerate(student_ids)
            ]
        },
        "photos": [{"photo": "p1.jpg", "faces": [{"student": s} for s in student_ids]}],
    }


def event_messages(k8s_api: client.ApiClient, ns: str, reason: str) -> list[str]:
    listed = client.CoreV1Api(k8s_api).list_namespaced_event(ns)
    return [str(e.message) for e in listed.items if e.reason == reason]


@contextlib.contextmanager
def captured(logger: str) -> Iterator[io.StringIO]:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(logger)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)


async def test_erasing_a_student_reaches_every_model_and_their_results_in_one_school_only(
    schools: Schools, redis_client: redis.Redis, k8s_api: client.ApiClient
) -> None:
    north, south = schools.north, schools.south
    enrol(redis_client, north, CLASS, ["s-001", "s-002"], seed=1)
    enrol(redis_client, south, CLASS, ["s-001", "s-002"], seed=2)  # same class code and ids
    template = redis_client.hget(keys.gallery(north, CLASS, MODELS[0].model_id), "s-001")
    assert isinstance(template, bytes) and template
    write_results(
        redis_client, north, "uid-both", "1", results_of(["s-001", "s-002"]), ttl_seconds=600
    )
    write_results(redis_client, north, "uid-other", "1", results_of(["s-002"]), ttl_seconds=600)
    write_results(redis_client, south, "uid-both", "1", results_of(["s-001"]), ttl_seconds=600)

    # South cannot reach north's class, even naming north's namespace: 404 like a missing one.
    path = f"/v1/classes/{CLASS}/students/s-001"
    outside = await schools.http.delete(
        path, params={"namespace": north}, headers=schools.auth("south")
    )
    assert outside.status_code == 404

    with captured("rollcall_api") as lines:
        resp = await schools.http.delete(path, headers=schools.auth("north"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["models"] == sorted(m.model_id for m in MODELS)
    assert (body["templates"], body["results"], body["eventRecorded"]) == (2, 1, True)

    for meta in MODELS:
        assert gallery_ids(redis_client, north, CLASS, meta) == ("s-002",)
        assert redis_client.get(keys.gallery_packed(north, CLASS, meta.model_id)) is None
        # South's same-named class still holds both students, packed copy and all.
        assert gallery_ids(redis_client, south, CLASS, meta) == ("s-001", "s-002")
        assert redis_client.get(keys.gallery_packed(south, CLASS, meta.model_id)) is not None
    missing = GalleryStore(redis_client, north).load(CLASS, MODELS[1], roster=ROSTER).missing
    assert missing == ("s-001", "s-010")  # what identify reports as not_enrolled
    assert read_results(redis_client, north, "uid-both") is None
    assert read_results(redis_client, north, "uid-other") is not None
    assert read_results(redis_client, south, "uid-both") is not None

    # Recorded: an Event in north's namespace and one audit line, with counts and no template.
    (event,) = event_messages(k8s_api, north, "StudentErased")
    assert "s-001" in event and "2 template(s)" in event
    assert "north" in event and event_messages(k8s_api, south, "StudentErased") == []
    audit = [json.loads(x) for x in lines.getvalue().splitlines()]
    audit = [r for r in audit if r["logger"] == "rollcall_api.audit"]
    assert len(audit) == 1 and audit[0]["action"] == "StudentErased"
    assert (audit[0]["school"], audit[0]["namespace"], audit[0]["templates"]) == ("north", north, 2)
    assert len(audit[0]["key_id"]) == 8 and audit[0]["key_id"] in event
    text = lines.getvalue() + event + resp.text
    for leaked in (template.hex(), repr(template), schools.keys["north"]):
        assert leaked not in text

    # Erased is erased: a second erase finds nothing.
    assert (await schools.http.delete(path, headers=schools.auth("north"))).status_code == 404


async def test_erasing_a_class_gallery_removes_every_model_of_that_class_only(
    schools: Schools, redis_client: redis.Redis, k8s_api: client.ApiClient
) -> None:
    north, south = schools.north, schools.south
    enrol(redis_client, north, CLASS, ["s-001", "s-002"], seed=3)
    enrol(redis_client, north, "8C", ["s-003"], seed=4)
    enrol(redis_client, south, CLASS, ["s-001"], seed=5)

    # A class only north has: south gets 404, as for any class it does not have.
    only_north = await schools.http.delete("/v1/classes/8C/gallery", headers=schools.auth("south"))
    assert only_north.status_code == 404
    assert gallery_ids(redis_client, north, "8C", MODELS[0]) == ("s-003",)

    resp = await schools.http.delete(f"/v1/classes/{CLASS}/gallery", headers=schools.auth("north"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["templates"] == 4 and len(resp.json()["models"]) == 2
    left = list(redis_client.scan_iter(match=f"{keys.tenant_prefix(north)}gallery:{{{CLASS}:*"))
    assert left == []
    assert gallery_ids(redis_client, north, "8C", MODELS[0]) == ("s-003",)
    assert gallery_ids(redis_client, south, CLASS, MODELS[0]) == ("s-001",)
    (event,) = event_messages(k8s_api, north, "ClassGalleryErased")
    assert f"class {CLASS}" in event

    gone = await schools.http.delete(f"/v1/classes/{CLASS}/gallery", headers=schools.auth("north"))
    assert gone.status_code == 404

    # With the gallery gone, a result still naming a student can be erased through that student.
    write_results(redis_client, north, "uid-late", "1", results_of(["s-002"]), ttl_seconds=600)
    late = await schools.http.delete(
        f"/v1/classes/{CLASS}/students/s-002", headers=schools.auth("north")
    )
    assert late.status_code == 200 and late.json()["results"] == 1, late.text
    assert read_results(redis_client, north, "uid-late") is None


async def test_the_api_redis_user_may_do_every_erase_step(tmp_path: Path) -> None:
    """Under the API's own ACL user (``rollcall_contract.acl``) on a real redis-server: the
    erase commands (SCAN, WATCH/MULTI/EXEC, HEXISTS, EXISTS, HLEN, HDEL, HSET, DEL, HGETALL)."""
    password = secrets.token_urlsafe(16)
    users = [(acl.API_USER, acl.api_rules(), password), (acl.ADMIN_USER, acl.admin_rules(), "a")]
    (tmp_path / "users.acl").write_text(acl.acl_file(users))
    with redis_server(tmp_path / "r", config=f"aclfile {tmp_path / 'users.acl'}\n") as server:
        admin = redis.Redis(port=server.port, username=acl.ADMIN_USER, password="a")
        enrol(admin, "t-north", CLASS, ["s-001", "s-002"], seed=6)
        write_results(admin, "t-north", "u1", "1", results_of(["s-001"]), ttl_seconds=600)
        as_api = AsyncRedis(port=server.port, username=acl.API_USER, password=password)
        try:
            eraser = Eraser(as_api)
            student = await eraser.erase_student("t-north", CLASS, "s-001")
            assert (student.templates, student.results) == (2, 1)
            whole = await eraser.erase_class("t-north", CLASS)
            assert whole.templates == 2 and len(whole.models) == 2
        finally:
            await as_api.aclose()
            admin.close()
