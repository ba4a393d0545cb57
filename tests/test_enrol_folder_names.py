"""An enrolment folder whose name is no student id is reported, never enrolled.

A roster can only name ids of letters, digits and ``._-`` (``model.IDENT``), so a folder called
``José Ruiz`` would be enrolled under a name no attendance job can ask for; a folder whose name is
not UTF-8 (a zip from another system) made the job fail when it wrote that name to Redis. Real
redis-server, the job's own ``run`` with the toy engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from rollcall_contract.jobenv import JobSettings
from rollcall_job.__main__ import run
from rollcall_job.enroll import INVALID_ID, valid_student_id
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.pipeline import BadInput
from toyfaces import ToyEngine, photo, save

TENANT = "school-a"


@pytest.mark.parametrize(
    ("sid", "valid"),
    [
        ("s-001", True),
        ("ann.lee_2", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("José", False),
        ("ann lee", False),
        ("-ann", False),
        ("ann\n", False),
        ("caf\\xe9", False),
    ],
)
def test_which_folder_names_are_student_ids(sid: str, valid: bool) -> None:
    assert valid_student_id(sid) is valid


def _settings(root: Path, url: str) -> JobSettings:
    return JobSettings(
        job_namespace=TENANT,
        job_name="rj-enrol",
        job_uid="uid-enrol-names",
        mode="enroll",
        class_code="6b",
        gallery="6b",
        input_dir=root,
        redis_url=url,
        progress_interval_seconds=0,
        termination_log=root.parent / "termination-log",
    )


def _toy(settings: JobSettings, min_face_px: int) -> ToyEngine:
    return ToyEngine(min_face_px=min_face_px)


@pytest.mark.redis
def test_folders_that_are_no_student_id_are_reported_and_the_rest_enrolled(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    root = tmp_path / "enroll"
    save(root / "ann" / "1.png", photo([("ann", 10, 10, 60)]))
    save(root / "José" / "1.png", photo([("bob", 10, 10, 60)]))
    latin1 = os.fsdecode(os.fsencode(root) + b"/caf\xe9")  # not UTF-8
    save(Path(latin1) / "1.png", photo([("cy", 10, 10, 60)]))

    summary, _ = run(_settings(root, redis_url), engine_loader=_toy)

    assert summary["enrolled"] == 1
    assert sorted(summary["not_enrolled"]) == ["Jos\u00e9", "caf\\xe9"]
    assert sorted((f["photo"], f["reason"]) for f in summary["failed"]) == [
        ("Jos\u00e9/1.png", INVALID_ID),
        ("caf\\xe9/1.png", INVALID_ID),
    ]
    meta = GalleryMeta("toy-v1", 3, "cosine")
    assert GalleryStore(redis_client, TENANT).load("6b", meta).student_ids == ("ann",)


@pytest.mark.redis
def test_an_enrolment_of_invalid_folders_only_is_bad_input(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "enroll"
    save(root / "ann lee" / "1.png", photo([("ann", 10, 10, 60)]))
    with pytest.raises(BadInput, match=INVALID_ID):
        run(_settings(root, redis_url), engine_loader=_toy)
