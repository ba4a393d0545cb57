"""Identify and enroll end to end on a generated engine: attendance, the decision rule and the
quality gate as they reach the result documents and annotated copies, rejections, bad photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import redis

from rollcall_job.annotate import MATCHED, REVIEW, UNKNOWN
from rollcall_job.enroll import average, enroll
from rollcall_job.gallery import Gallery, GalleryMeta, GalleryStore, encode
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import BadInput, embedder_spec, identify, no_gallery
from rollcall_job.quality import QualityGate
from rollcall_job.termination import summary_message
from rollcall_operator.status import parse_termination_message
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
        margin=0.02,
        gate=QualityGate(),
        top_k=2,
        max_bytes=1 << 20,
        annotate_dir=tmp_path / "out",
    )
    docs = out.documents
    att = docs["attendance"]
    assert [p["student"] for p in att["present"]] == ["ann", "bob", "cy"]
    assert att["absent"] == ["dee"] and att["uncertain"] == [] and att["needs_review"] == []
    assert att["not_enrolled"] == ["eve"]  # cannot be recognised, so not claimed absent
    assert att["unknown"] == [{"photo": "01_front.png", "face": 2}]
    s = docs["summary"]
    assert (s["images"], s["errors"], s["faces"], s["matched"], s["unknown"]) == (4, 1, 5, 4, 1)
    assert (s["present"], s["uncertain"], s["absent"], s["not_enrolled"]) == (3, 0, 1, 1)
    assert (s["needs_review"], s["margin"]) == (0, 0.02)
    assert s["failed"] == [{"photo": "04_corrupt.jpg", "reason": "corrupt"}]
    by_photo = {p["photo"]: p for p in docs["photos"]}
    assert by_photo["03_empty.png"]["faces"] == []
    front = by_photo["01_front.png"]["faces"]
    assert [f["student"] for f in front] == ["ann", "bob", None]
    assert [(f["decision"], f["rule"]) for f in front] == [
        ("matched", "matched"),
        ("matched", "matched"),
        ("unknown", "below_threshold"),
    ]
    # three candidates explain each face, whatever top_k asked for; scores are distances
    assert front[0]["candidates"][0]["student"] == "ann"
    assert len(front[0]["candidates"]) == 3
    assert front[0]["score"] <= 0.05 < front[2]["score"] == front[2]["candidates"][0]["score"]
    annotated = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg")
    )
    assert annotated == [
        "annotated/01_front.jpg",
        "annotated/02_back.jpg",
        "annotated/03_empty.jpg",
    ]


def test_two_faces_claiming_one_student_leave_the_student_uncertain(tmp_path: Path) -> None:
    # two ann-coloured faces in one photo: the old greedy rule named one ann and left the other;
    # neither is decisively ann, so both need review and ann is uncertain, never present
    save(tmp_path / "twins.png", photo([("ann", 10, 10, 40), ("ann", 100, 10, 40)]))
    engine = ToyEngine()
    out = identify(
        engine,
        list_photos(tmp_path),
        _gallery(["ann", "bob"], engine),
        roster=[],
        threshold=0.05,
        margin=0.02,
        gate=QualityGate(),
        max_bytes=1 << 20,
        annotate_dir=tmp_path / "out",
    )
    faces = out.documents["photos"][0]["faces"]
    assert [(f["decision"], f["rule"], f["pointsAt"]) for f in faces] == [
        ("needs_review", "contested_by_other_face", ["ann"])
    ] * 2
    att = out.documents["attendance"]
    assert att["present"] == [] and att["absent"] == ["bob"]  # empty roster = whole gallery
    assert [u["student"] for u in att["uncertain"]] == ["ann"]
    assert [(f["face"], f["rule"]) for f in att["uncertain"][0]["faces"]] == [
        (0, "contested_by_other_face"),
        (1, "contested_by_other_face"),
    ]
    s = out.documents["summary"]
    assert (s["matched"], s["needs_review"], s["present"], s["uncertain"]) == (0, 2, 0, 1)
    # the counts reach the RJ's status.summary through the termination message
    status, error = parse_termination_message(summary_message(s, result_key=None))
    assert error is None and status is not None
    assert (status.present, status.uncertain, status.needs_review) == (0, 1, 2)
    assert status.model_dump(by_alias=True)["needsReview"] == 2
    # the annotated copy draws both boxes amber, not green
    img = cv2.imread(str(tmp_path / "out" / "annotated" / "twins.jpg"))
    assert img is not None
    assert _drawn(img, REVIEW) > 100 and _drawn(img, MATCHED) == _drawn(img, UNKNOWN) == 0


def _drawn(img: npt.NDArray[np.generic], colour: tuple[int, int, int]) -> int:
    """How many pixels of an annotated JPEG are (about) this box colour: captions are filled."""
    return int((np.abs(img.astype(int) - np.array(colour)).max(axis=2) < 40).sum())


def test_a_masked_face_needs_review_and_a_good_face_elsewhere_still_counts(
    tmp_path: Path,
) -> None:
    engine = ToyEngine()
    gallery = _gallery(["ann", "bob"], engine)
    masked = photo([("ann", 10, 10, 60), ("bob", 120, 10, 60)])
    masked[10 + 36 : 10 + 60, 10 : 10 + 60] = 245  # a white mask over ann's lower face
    save(tmp_path / "1.png", masked)
    out = identify(
        engine,
        list_photos(tmp_path),
        gallery,
        roster=["ann", "bob"],
        threshold=0.5,  # so loose that the masked face is within it: only the gate stops it
        margin=0.02,
        gate=QualityGate(),
        max_bytes=1 << 20,
        annotate_dir=tmp_path / "out",
    )
    faces = out.documents["photos"][0]["faces"]
    assert [(f["decision"], f["rule"], f["student"]) for f in faces] == [
        ("needs_review", "low_quality:occluded_lower_face", None),
        ("matched", "matched", "bob"),
    ]
    assert faces[0]["candidates"][0] == {"student": "ann", "score": faces[0]["score"]}
    att = out.documents["attendance"]
    assert [p["student"] for p in att["present"]] == ["bob"]
    assert [u["student"] for u in att["uncertain"]] == ["ann"]
    assert att["needs_review"] == [
        {"photo": "1.png", "face": 0, "rule": "low_quality:occluded_lower_face"}
    ]
    img = cv2.imread(str(tmp_path / "out" / "annotated" / "1.jpg"))
    assert img is not None
    assert _drawn(img, REVIEW) > 100 and _drawn(img, MATCHED) > 100 and _drawn(img, UNKNOWN) == 0


def test_no_gallery_for_the_model_says_what_to_run() -> None:
    err = no_gallery("grade7-b", "grade7-b", "mobilefacenet-sirius-v1")
    text = str(err)
    assert isinstance(err, BadInput)
    assert "'grade7-b'" in text and "'mobilefacenet-sirius-v1'" in text
    assert "rollcall enroll --class grade7-b --claim" in text and "mode: enroll" in text
    assert "--gallery 7b" in str(no_gallery("grade7-b", "7b", "m"))


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
        margin=spec.margin,
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


@pytest.mark.parametrize(
    ("card_margin", "given", "want"), [(0.06, None, 0.06), (0.06, 0.1, 0.1), (0.06, 0.0, 0.0)]
)
def test_the_rj_margin_overrides_the_cards(
    card_margin: float, given: float | None, want: float
) -> None:
    assert embedder_spec(ToyCard(margin=card_margin), None, given).margin == want


def test_enroll_averages_and_reports_rejected_photos(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    root = tmp_path / "enroll"
    save(root / "ann" / "a1.png", photo([("ann", 10, 10, 60)]))
    save(root / "ann" / "a2.png", photo([("ann", 50, 50, 60)], gain=0.7))
    save(root / "bob" / "group.png", photo([("bob", 10, 10, 60), ("cy", 100, 10, 60)]))
    save(root / "bob" / "b1.png", photo([("bob", 10, 10, 60)]))
    masked = photo([("bob", 10, 10, 60)])
    masked[10 + 36 : 10 + 60, 10:70] = 40  # a black mask over the lower face
    save(root / "bob" / "masked.png", masked)
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
        "bob/masked.png": "low_quality:occluded_lower_face",
        "cy/tiny.png": "too_small",
        "dee/blank.png": "no_face",
        "eve/broken.jpg": "empty",
    }
    s = out.documents["summary"]
    assert (s["students"], s["enrolled"], s["images"], s["used"], s["rejected"]) == (5, 2, 8, 3, 5)
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
