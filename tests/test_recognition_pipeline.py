"""Identify and enroll end to end on a generated engine: attendance, rejections, bad photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from rollcall_job.enroll import average, enroll
from rollcall_job.gallery import Gallery, GalleryMeta, GalleryStore, encode
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import BadInput, embedder_spec, identify
from toyfaces import ToyCard, ToyEngine, photo, save

META = GalleryMeta("toy-v1", 3, "cosine")


def _gallery(students: list[str], engine: ToyEngine) -> Gallery:
    rows = []
    for sid in students:
        img = photo([(sid, 10, 10, 40)])
        rows.append((sid, encode(engine.embed(img, engine.detect(img)), 3)))
    return Gallery.from_rows(META, rows)


@pytest.fixture
def class_photos(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    save(
        d / "01_front.png",
        photo([("ann", 10, 10, 40), ("bob", 80, 10, 50), ("stranger", 160, 10, 40)]),
    )
    # ann again, darker (cosine ignores it), and cy
    save(d / "02_back.png", photo([("ann", 10, 100, 40), ("cy", 200, 100, 40)], gain=0.8))
    save(d / "03_empty.png", photo([]))
    (d / "04_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 20)
    return d


def test_identify_marks_present_absent_unknown(class_photos: Path, tmp_path: Path) -> None:
    engine = ToyEngine()
    gallery = _gallery(["ann", "bob", "cy", "dee"], engine)
    roster = ["ann", "bob", "cy", "dee", "eve"]  # eve was never enrolled
    out = identify(
        engine,
        list_photos(class_photos),
        gallery,
        roster=roster,
        threshold=0.05,
        top_k=2,
        max_bytes=1 << 20,
        annotate_dir=tmp_path / "out",
    )
    docs = out.documents
    att = docs["attendance"]
    assert [p["student"] for p in att["present"]] == ["ann", "bob", "cy"]
    assert att["absent"] == ["dee"]
    assert att["not_enrolled"] == ["eve"]  # cannot be recognised, so not claimed absent
    assert att["unknown"] == [{"photo": "01_front.png", "face": 2}]
    s = docs["summary"]
    assert (s["images"], s["errors"], s["faces"], s["matched"], s["unknown"]) == (4, 1, 5, 4, 1)
    assert (s["present"], s["absent"], s["not_enrolled"]) == (3, 1, 1)
    assert s["failed"] == [{"photo": "04_corrupt.jpg", "reason": "corrupt"}]
    by_photo = {p["photo"]: p for p in docs["photos"]}
    assert by_photo["03_empty.png"]["faces"] == []
    front = by_photo["01_front.png"]["faces"]
    assert [f["student"] for f in front] == ["ann", "bob", "unknown"]
    assert len(front[0]["candidates"]) == 2 and front[0]["candidates"][0]["student"] == "ann"
    assert front[2]["score"] is None and front[0]["score"] <= 0.05  # distances
    annotated = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg")
    )
    assert annotated == [
        "annotated/01_front.jpg",
        "annotated/02_back.jpg",
        "annotated/03_empty.jpg",
    ]


def test_a_student_is_one_face_per_photo(tmp_path: Path) -> None:
    # two ann-coloured faces in one photo: one is ann, the other cannot also be ann
    save(tmp_path / "twins.png", photo([("ann", 10, 10, 40), ("ann", 100, 10, 40)]))
    engine = ToyEngine()
    out = identify(
        engine,
        list_photos(tmp_path),
        _gallery(["ann", "bob"], engine),
        roster=[],
        threshold=0.05,
        max_bytes=1 << 20,
    )
    faces = out.documents["photos"][0]["faces"]
    assert sorted(f["student"] for f in faces) == ["ann", "unknown"]
    assert out.documents["attendance"]["absent"] == ["bob"]  # empty roster = whole gallery


def test_euclidean_card_threshold_is_a_distance(class_photos: Path) -> None:
    engine = ToyEngine(ToyCard(metric="euclidean", threshold=0.1))
    spec = embedder_spec(engine.embedder_card)
    rows = []
    for sid in ("ann", "cy"):
        img = photo([(sid, 10, 10, 40)])
        rows.append((sid, encode(engine.embed(img, engine.detect(img)), 3)))
    gallery = Gallery.from_rows(spec.meta, rows)
    out = identify(
        engine,
        list_photos(class_photos),
        gallery,
        roster=["ann", "cy"],
        threshold=spec.threshold,
        max_bytes=1 << 20,
    )
    present = {p["student"]: p for p in out.documents["attendance"]["present"]}
    # the darker copy of ann/cy is too far in Euclidean terms; the front photo's ann is exact
    assert set(present) == {"ann"}
    assert present["ann"]["photo"] == "01_front.png" and present["ann"]["score"] < 0.01


def test_embedder_spec_needs_metric_and_threshold() -> None:
    with pytest.raises(BadInput):
        embedder_spec(ToyCard(metric=None))
    with pytest.raises(BadInput):
        embedder_spec(ToyCard(threshold=None))
    assert embedder_spec(ToyCard(threshold=None), 0.5).threshold == 0.5


def test_enroll_averages_and_reports_rejected_photos(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    root = tmp_path / "enroll"
    save(root / "ann" / "a1.png", photo([("ann", 10, 10, 60)]))
    save(root / "ann" / "a2.png", photo([("ann", 50, 50, 60)], gain=0.7))
    save(root / "bob" / "group.png", photo([("bob", 10, 10, 60), ("cy", 100, 10, 60)]))
    save(root / "bob" / "b1.png", photo([("bob", 10, 10, 60)]))
    save(root / "cy" / "tiny.png", photo([("cy", 10, 10, 25)]))
    save(root / "dee" / "blank.png", photo([]))
    (root / "eve").mkdir()
    (root / "eve" / "broken.jpg").write_bytes(b"")
    engine = ToyEngine(min_face_px=40)
    out = enroll(
        engine,
        root,
        metric="cosine",
        model_id="toy-v1",
        min_face_px=40,
        max_bytes=1 << 20,
        small_faces=lambda img: len(ToyEngine(min_face_px=12).detect(img)),
    )
    assert sorted(out.students) == ["ann", "bob"]
    reasons = {d["photo"]: d.get("reason") for d in out.documents["photos"] if not d["used"]}
    assert reasons == {
        "bob/group.png": "several_faces",
        "cy/tiny.png": "too_small",
        "dee/blank.png": "no_face",
        "eve/broken.jpg": "empty",
    }
    s = out.documents["summary"]
    assert (s["students"], s["enrolled"], s["images"], s["used"], s["rejected"]) == (5, 2, 7, 3, 4)
    assert s["not_enrolled"] == ["cy", "dee", "eve"]
    assert out.documents["students"]["ann"]["used"] == 2
    # cosine enrolment is unit length and points at ann's colour
    ann = out.students["ann"]
    assert np.linalg.norm(ann) == pytest.approx(1.0, abs=1e-5)
    GalleryStore(redis_client, "school-a").put("6b", META, out.students)
    assert GalleryStore(redis_client, "school-a").load("6b", META, ["ann", "bob"]).student_ids == (
        "ann",
        "bob",
    )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_average(metric: str) -> None:
    e = np.array([[3.0, 0.0], [0.0, 1.0]], np.float32)
    got = average(e, metric)  # type: ignore[arg-type]
    if metric == "cosine":  # each photo weighs the same whatever its norm
        assert got.tolist() == pytest.approx([2**-0.5, 2**-0.5])
    else:
        assert got.tolist() == pytest.approx([1.5, 0.5])


def test_enroll_without_student_folders_is_bad_input(tmp_path: Path) -> None:
    save(tmp_path / "loose.png", photo([("ann", 10, 10, 60)]))
    with pytest.raises(BadInput):
        enroll(
            ToyEngine(),
            tmp_path,
            metric="cosine",
            model_id="toy-v1",
            min_face_px=40,
            max_bytes=1 << 20,
        )
