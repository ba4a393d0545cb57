"""An erase is complete even while an identify job of that class runs (real models, Redis, API code).

The six people of insightface's group photo are enrolled (plus an absentee who is not in it), the
job runs in-process on the real engine, and the API's own erase (``rollcall_api.erasure``) erases
one of them at the worst moments: just before the job publishes (the job must re-read the gallery
after publishing and publish again without them), between its publish and that re-read (the
erase's scan deletes the first result, the job publishes a clean one), and after the job ended
(the erase's scan deletes the result). In every case no stored result names the erased student,
by the API's own test of naming (``erasure.mentions``), and the other students' marks are those of
a run without the erase. An enrol job of the class during which a student is erased does not write
that student's template back, and the result it publishes does not name them either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from rollcall_api.erasure import Eraser, Erasure, mentions
from rollcall_contract import keys
from rollcall_contract.jobenv import JobSettings
from rollcall_job.__main__ import run
from rollcall_job.faces import FaceEngine, load_engine, read_image
from rollcall_job.gallery import GalleryStore
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import embedder_spec, identify
from rollcall_job.recheck import publish_checked
from rollcall_job.results import write_results

pytestmark = pytest.mark.models

TENANT = "school-a"
CLASS = "6B"
ERASED = "s2"
STUDENTS = [f"s{i}" for i in range(6)]
ROSTER = [*STUDENTS, "absentee"]


@pytest.fixture(scope="module")
def engine() -> Iterator[FaceEngine]:
    yield load_engine(build_models(), threads=2, batch_size=8)


@pytest.fixture
def job(
    engine: FaceEngine, tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> JobSettings:
    """The class enrolled (each face of the group photo is its own template; the absentee from two
    other photos) and an identify job over the group photo and a stranger's."""
    spec = embedder_spec(engine.embedder_card)
    group = read_image(photo("t1.jpg"))
    faces = engine.detect(group)
    assert len(faces) == 6
    templates = dict(zip(STUDENTS, engine.embed(group, faces), strict=True))
    obama = read_image(photo("obama.jpg"))
    templates["absentee"] = engine.embed(obama, engine.detect(obama))[:1]
    GalleryStore(redis_client, TENANT).put(CLASS, spec.meta, templates)
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    shutil.copy(photo("t1.jpg"), class_dir / "group.jpg")
    shutil.copy(photo("biden.jpg"), class_dir / "visitor.jpg")
    return JobSettings(
        job_namespace=TENANT,
        job_name="rj-6b",
        job_uid="uid-6b",
        mode="identify",
        class_code=CLASS,
        gallery=CLASS,
        roster=ROSTER,
        input_dir=class_dir,
        redis_url=redis_url,
        progress_interval_seconds=0,
        termination_log=tmp_path / "termination-log",
    )


def erase(url: str, student: str = ERASED) -> Erasure:
    """The API's erase of one student of the class, as DELETE /v1/classes/6B/students/<id> runs it."""

    async def go() -> Erasure:
        client = AsyncRedis.from_url(url)
        try:
            return await Eraser(client).erase_student(TENANT, CLASS, student)
        finally:
            await client.aclose()

    return asyncio.run(go())


def erase_class(url: str) -> Erasure:
    """The API's erase of the class gallery, as DELETE /v1/classes/6B/gallery runs it."""

    async def go() -> Erasure:
        client = AsyncRedis.from_url(url)
        try:
            return await Eraser(client).erase_class(TENANT, CLASS)
        finally:
            await client.aclose()

    return asyncio.run(go())


def stored(client: redis.Redis, uid: str = "uid-6b") -> dict[str, str] | None:
    """The published results hash as the API's erase reads it (None: no result stored)."""
    raw = cast(dict[bytes, bytes], client.hgetall(keys.job_results(TENANT, uid)))
    return {k.decode(): v.decode() for k, v in raw.items()} or None


def marks(fields: Mapping[str, str]) -> dict[str, Any]:
    """Who is present, absent, uncertain, not enrolled; and the group photo's face decisions."""
    att = json.loads(fields["attendance"])
    return {
        "present": sorted(p["student"] for p in att["present"]),
        "uncertain": sorted(u["student"] for u in att["uncertain"]),
        "absent": att["absent"],
        "not_enrolled": att["not_enrolled"],
    }


def run_job(engine: FaceEngine, settings: JobSettings, **seams: Any) -> dict[str, Any]:
    summary, _ = run(settings, engine_loader=lambda s, px: engine, **seams)
    return summary


def test_without_an_erase_every_face_is_its_student(
    engine: FaceEngine, job: JobSettings, redis_client: redis.Redis
) -> None:
    """The baseline the other tests change: all six present, the absentee absent."""
    run_job(engine, job)
    fields = stored(redis_client)
    assert fields is not None and mentions(fields, ERASED)
    assert marks(fields) == {
        "present": STUDENTS,
        "uncertain": [],
        "absent": ["absentee"],
        "not_enrolled": [],
    }


def test_erased_just_before_the_publish_the_published_result_does_not_name_them(
    engine: FaceEngine,
    job: JobSettings,
    redis_url: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[Erasure] = []
    with caplog.at_level(logging.INFO, logger="rollcall_job"):
        summary = run_job(engine, job, before_publish=lambda: done.append(erase(redis_url)))
    assert done[0].templates == 1  # the erase found the template: the job had loaded it
    fields = stored(redis_client)
    assert fields is not None and not mentions(fields, ERASED)
    others = [s for s in STUDENTS if s != ERASED]
    assert marks(fields) == {
        "present": others,
        "uncertain": [],
        "absent": ["absentee"],
        "not_enrolled": [],
    }
    assert (summary["present"], summary["roster"]) == (5, 6)
    # the redecision is logged with counts; no line names the erased student
    assert any(getattr(r, "erased", None) == 1 for r in caplog.records)
    for r in caplog.records:
        assert ERASED not in r.getMessage() and ERASED not in json.dumps(vars(r), default=str)


def test_erased_between_the_publish_and_the_jobs_reread_the_result_is_published_again(
    engine: FaceEngine, job: JobSettings, redis_url: str, redis_client: redis.Redis
) -> None:
    """The erase's HDEL and its scan both land after the publish, before the job reads the gallery:
    the scan deletes the first result, the read sees the student gone, the job publishes again."""
    spec = embedder_spec(engine.embedder_card)
    store = GalleryStore(redis_client, TENANT)
    gallery = store.load(CLASS, spec.meta, ROSTER)
    first = identify(
        engine,
        list_photos(job.input_dir),
        gallery,
        roster=ROSTER,
        threshold=spec.threshold,
        margin=spec.margin,
        max_bytes=1 << 24,
    ).decided
    published: list[dict[str, str] | None] = []
    erasures: list[Erasure] = []

    def publish(documents: Mapping[str, Any]) -> str:
        key = write_results(redis_client, TENANT, "uid-6b", "pod-0", documents, ttl_seconds=600)
        published.append(stored(redis_client))
        if not erasures:
            erasures.append(erase(redis_url))
            assert stored(redis_client) is None  # the erase's scan found the first publish
        return key

    last, key, count = publish_checked(
        first, publish, lambda ids: store.enrolled(CLASS, spec.meta.model_id, ids)
    )
    assert (erasures[0].templates, erasures[0].results, count, len(published)) == (1, 1, 1, 2)
    assert published[0] is not None and mentions(published[0], ERASED)
    fields = stored(redis_client)
    assert fields is not None and fields == published[1] and not mentions(fields, ERASED)
    assert marks(fields)["present"] == [s for s in STUDENTS if s != ERASED]
    assert ERASED not in last.gallery.student_ids and key == keys.job_results(TENANT, "uid-6b")


def test_erased_after_the_job_ended_the_erase_deletes_the_result(
    engine: FaceEngine, job: JobSettings, redis_url: str, redis_client: redis.Redis
) -> None:
    run_job(engine, job)
    assert stored(redis_client) is not None
    done = erase(redis_url)
    assert (done.templates, done.results) == (1, 1)
    assert stored(redis_client) is None


# --- enrol ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", [None, "detect", "before_publish"])
def test_an_enrol_job_does_not_write_back_or_name_a_student_erased_while_it_ran(
    engine: FaceEngine,
    job: JobSettings,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    when: str | None,
) -> None:
    """s2 (enrolled) is enrolled again from new photos beside a new student. When the erase of s2
    lands while the job detects faces, its put must not bring s2's template back; when it lands
    after the put (just before the publish), it removes the fresh template. Either way the
    published result must not name s2 (the API's ``mentions``) and counts it as erased; without
    the erase, s2's template is the new one and the result names s2."""
    enrol_dir = tmp_path / "enrol"
    for sid, name in ((ERASED, "obama.jpg"), ("newcomer", "biden.jpg")):
        (enrol_dir / sid).mkdir(parents=True)
        shutil.copy(photo(name), enrol_dir / sid / "1.jpg")
    gkey = keys.gallery(TENANT, CLASS, embedder_spec(engine.embedder_card).meta.model_id)
    old_template = redis_client.hget(gkey, ERASED)
    erasures: list[Erasure] = []
    detect = engine.detect

    def erasing() -> None:
        if not erasures:
            erasures.append(erase(redis_url))

    def erasing_detect(image: Any) -> Any:
        if when == "detect":
            erasing()
        return detect(image)

    monkeypatch.setattr(engine, "detect", erasing_detect)
    settings = job.model_copy(update={"mode": "enroll", "input_dir": enrol_dir, "roster": []})
    seams = {"before_publish": erasing} if when == "before_publish" else {}
    summary = run_job(engine, settings, **seams)
    erased = when is not None
    assert [e.templates for e in erasures] == ([1] if erased else [])
    spec = embedder_spec(engine.embedder_card)
    ids = GalleryStore(redis_client, TENANT).load(CLASS, spec.meta).student_ids
    assert set(ids) == {*STUDENTS, "absentee", "newcomer"} - ({ERASED} if erased else set())
    assert summary["erased_while_running"] == int(erased)
    fields = stored(redis_client)
    assert fields is not None and mentions(fields, ERASED) is not erased
    assert mentions(fields, "newcomer")
    if erased:
        assert json.loads(fields["summary"])["enrolled"] == 1
    else:
        new_template = redis_client.hget(gkey, ERASED)
        assert new_template is not None and new_template != old_template
