"""The recognition job on real photos with the real ONNX engine (built by `make models`).

A group photo's six people are enrolled from a transformed copy (smaller, mirrored, brighter,
re-encoded as a low-quality JPEG), then identified on the original: all six present, an enrolled
student who is not in the photos absent, a stranger unknown, a corrupt file and a photo with no
face reported while the job succeeds. Then the same through ``python -m rollcall_job`` as the
operator runs it: env in, exit code and termination message out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import redis

from redisrig import free_port
from rollcall_contract import keys
from rollcall_contract.jobenv import ExitCode
from rollcall_job.enroll import enroll
from rollcall_job.faces import FaceEngine, load_engine, read_image
from rollcall_job.gallery import GalleryStore
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import embedder_spec, identify
from rollcall_job.results import read_results

pytestmark = pytest.mark.models

Box = tuple[float, float, float, float]
SCALE = 0.75


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return build_models()


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[FaceEngine]:
    yield load_engine(model_dir, threads=2, batch_size=8)


def _transformed(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Scale, mirror, brighten, then JPEG re-encode at low quality."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (round(w * SCALE), round(h * SCALE)), interpolation=cv2.INTER_AREA)
    bright = cv2.convertScaleAbs(cv2.flip(small, 1), alpha=1.15, beta=20)
    ok, buf = cv2.imencode(".jpg", bright, [cv2.IMWRITE_JPEG_QUALITY, 55])
    assert ok
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return np.asarray(out, dtype=np.uint8)


def _box_in_transformed(box: Box, width: int) -> Box:
    x1, y1, x2, y2 = (v * SCALE for v in box)
    w = round(width * SCALE)
    return (w - x2, y1, w - x1, y2)


def _crop(image: npt.NDArray[np.uint8], box: Box, margin: float = 0.4) -> npt.NDArray[np.uint8]:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    h, w = image.shape[:2]
    return image[
        max(0, int(y1 - my)) : min(h, int(y2 + my)), max(0, int(x1 - mx)) : min(w, int(x2 + mx))
    ]


def _iou(a: Box | list[float], b: Box | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _write(path: Path, image: npt.NDArray[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _prepare(engine: FaceEngine, root: Path) -> tuple[list[Box], Path, Path]:
    """Enrollment folders (s0..s5 from the transformed group photo, plus 'absentee') and a
    class folder (the original group photo, a stranger, a faceless photo, a corrupt file)."""
    group = read_image(photo("t1.jpg"))
    boxes = [f.box for f in engine.detect(group)]
    assert len(boxes) == 6
    copy = _transformed(group)
    enroll_dir, class_dir = root / "enroll", root / "class"
    for i, box in enumerate(boxes):
        _write(
            enroll_dir / f"s{i}" / "portrait.jpg",
            _crop(copy, _box_in_transformed(box, group.shape[1])),
        )
    (enroll_dir / "absentee").mkdir()
    shutil.copy(photo("obama.jpg"), enroll_dir / "absentee" / "1.jpg")
    shutil.copy(photo("obama2.jpg"), enroll_dir / "absentee" / "2.jpg")
    class_dir.mkdir()
    shutil.copy(photo("t1.jpg"), class_dir / "group.jpg")
    shutil.copy(photo("biden.jpg"), class_dir / "visitor.jpg")
    shutil.copy(photo("mask_white.jpg"), class_dir / "no_face.jpg")
    (class_dir / "corrupt.jpg").write_bytes(photo("t1.jpg").read_bytes()[:3000])
    return boxes, enroll_dir, class_dir


ROSTER = [f"s{i}" for i in range(6)] + ["absentee"]


def _check_identified(docs: dict[str, Any], boxes: list[Box]) -> None:
    att = docs["attendance"]
    assert sorted(p["student"] for p in att["present"]) == sorted(ROSTER[:6])
    assert att["absent"] == ["absentee"]
    assert att["unknown"] == [{"photo": "visitor.jpg", "face": 0}]
    by_photo = {p["photo"]: p for p in docs["photos"]}
    assert by_photo["corrupt.jpg"]["error"] == "corrupt"
    assert by_photo["no_face.jpg"]["faces"] == []
    # each face in the group photo is the student enrolled from that face's place in the copy
    for face in by_photo["group.jpg"]["faces"]:
        i = max(range(6), key=lambda j: _iou(face["box"], boxes[j]))
        assert _iou(face["box"], boxes[i]) > 0.5
        assert face["student"] == f"s{i}"


def test_group_photo_enrolled_from_a_transformed_copy_is_fully_identified(
    engine: FaceEngine, tmp_path: Path, redis_client: redis.Redis
) -> None:
    boxes, enroll_dir, class_dir = _prepare(engine, tmp_path)
    spec = embedder_spec(engine.embedder_card)
    enrolled = enroll(
        engine,
        enroll_dir,
        metric=spec.meta.metric,
        model_id=spec.meta.model_id,
        min_face_px=40,
        max_bytes=1 << 24,
    )
    assert sorted(enrolled.students) == sorted(ROSTER)
    assert enrolled.documents["students"]["absentee"]["used"] == 2
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", spec.meta, enrolled.students)
    gallery = store.load("6b", spec.meta, ROSTER)
    out = identify(
        engine,
        list_photos(class_dir),
        gallery,
        roster=ROSTER,
        threshold=spec.threshold,
        margin=spec.margin,
        top_k=3,
        max_bytes=1 << 24,
        annotate_dir=tmp_path / "out",
    )
    _check_identified(out.documents, boxes)
    s = out.documents["summary"]
    assert (s["images"], s["errors"], s["faces"], s["matched"], s["unknown"]) == (4, 1, 7, 6, 1)
    assert (tmp_path / "out" / "annotated" / "group.jpg").is_file()


def _run_job(env: dict[str, str], tmp: Path) -> tuple[int, dict[str, Any], str]:
    term = tmp / f"termination-{env['ROLLCALL_JOB_UID']}"
    full = {k: v for k, v in os.environ.items() if not k.startswith("ROLLCALL_")}
    full.update(env, ROLLCALL_TERMINATION_LOG=str(term), ROLLCALL_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-m", "rollcall_job"],
        env=full,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return proc.returncode, json.loads(term.read_text()), proc.stdout + proc.stderr


@pytest.mark.slow
def test_python_m_rollcall_job_with_the_env_contract(
    engine: FaceEngine,
    model_dir: Path,
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    boxes, enroll_dir, class_dir = _prepare(engine, tmp_path)
    base = {
        "ROLLCALL_JOB_NAMESPACE": "school-a",
        "ROLLCALL_JOB_NAME": "rj-6b",
        "ROLLCALL_CLASS_CODE": "6B",
        "ROLLCALL_GALLERY": "6b",
        "ROLLCALL_REDIS_URL": redis_url,
        "ROLLCALL_MODEL_DIR": str(model_dir),
        "ROLLCALL_ROSTER": json.dumps(ROSTER),
    }
    rc, term, logs = _run_job(
        {
            **base,
            "ROLLCALL_JOB_UID": "enroll-1",
            "ROLLCALL_MODE": "enroll",
            "ROLLCALL_INPUT_DIR": str(enroll_dir),
        },
        tmp_path,
    )
    assert rc == ExitCode.OK, logs
    assert term["summary"]["enrolled"] == 7 and term["summary"]["rejected"] == 0

    rc, term, logs = _run_job(
        {**base, "ROLLCALL_JOB_UID": "identify-1", "ROLLCALL_INPUT_DIR": str(class_dir)}, tmp_path
    )
    assert rc == ExitCode.OK, logs
    assert term["resultKey"] == keys.job_results("school-a", "identify-1")
    assert (term["summary"]["present"], term["summary"]["absent"]) == (6, 1)
    results = read_results(redis_client, "school-a", "identify-1")
    assert results is not None
    _check_identified(results, boxes)
    for line in logs.splitlines():  # structured logs, one JSON object a line
        json.loads(line)

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, term, _ = _run_job(
        {**base, "ROLLCALL_JOB_UID": "identify-2", "ROLLCALL_INPUT_DIR": str(empty)}, tmp_path
    )
    assert rc == ExitCode.BAD_INPUT and "no photos" in term["error"]

    down = f"redis://:pw-{free_port()}@127.0.0.1:{free_port()}/0"
    rc, term, logs = _run_job(
        {
            **base,
            "ROLLCALL_JOB_UID": "identify-3",
            "ROLLCALL_INPUT_DIR": str(class_dir),
            "ROLLCALL_REDIS_URL": down,
        },
        tmp_path,
    )
    assert rc == ExitCode.TRANSIENT and term["reason"] == "Transient"
    assert down.split("@")[0].split(":")[-1] not in logs + json.dumps(term)


def test_enrollment_rejects_group_faceless_and_tiny_photos(
    engine: FaceEngine, model_dir: Path, tmp_path: Path
) -> None:
    fine = load_engine(model_dir, threads=2, min_face_px=20)
    obama = read_image(photo("obama.jpg"))
    tiny = cv2.resize(
        obama, (obama.shape[1] // 10, obama.shape[0] // 10), interpolation=cv2.INTER_AREA
    )  # face ~25 px
    root = tmp_path / "enroll"
    (root / "x").mkdir(parents=True)
    for name in ("t1.jpg", "mask_white.jpg"):
        shutil.copy(photo(name), root / "x" / name)
    _write(root / "x" / "tiny.jpg", tiny)
    _write(root / "y" / "ok.jpg", obama)
    spec = embedder_spec(engine.embedder_card)
    out = enroll(
        engine,
        root,
        metric=spec.meta.metric,
        model_id=spec.meta.model_id,
        min_face_px=40,
        max_bytes=1 << 24,
        small_faces=lambda im: len(fine.detect(im)),
    )
    reasons = {d["photo"]: d.get("reason") for d in out.documents["photos"]}
    assert reasons == {
        "x/t1.jpg": "several_faces",
        "x/mask_white.jpg": "no_face",
        "x/tiny.jpg": "too_small",
        "y/ok.jpg": None,
    }
    assert list(out.students) == ["y"] and out.documents["summary"]["not_enrolled"] == ["x"]
