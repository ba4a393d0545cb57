"""The default models on real photos: one face per person, landmarks where faces are, small
faces dropped, and the embeddings tell the same person from different people."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.faces import CPU_EMBED_BATCH, DetectedFace, FaceEngine, load_engine, read_image
from rollcall_job.matcher import Metric, affinity, from_affinity
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.runtime import CPU

pytestmark = pytest.mark.models

SAME = ("obama.jpg", "obama2.jpg", "obama3.jpg")
OTHERS = ("biden.jpg", "Tom_Hanks_54745.png", "astronaut.png")


@pytest.fixture(scope="module")
def engine() -> Iterator[FaceEngine]:
    yield load_engine(build_models(), threads=2, batch_size=4)


def _only_face(engine: FaceEngine, name: str) -> tuple[npt.NDArray[np.uint8], DetectedFace]:
    image = read_image(photo(name))
    faces = engine.detect(image)
    assert len(faces) == 1, name
    return image, faces[0]


def _distance(engine: FaceEngine, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Distance in the embedder card's own metric (cosine for the default, Euclidean for dlib)."""
    metric = cast(Metric, engine.embedder_card.metric)
    return from_affinity(float(affinity(a[None], b[None], metric)[0, 0]), metric)


def test_same_person_is_closer_than_any_different_person(engine: FaceEngine) -> None:
    vectors = {}
    for name in SAME + OTHERS:
        image, face = _only_face(engine, name)
        vectors[name] = engine.embed(image, [face])[0]
    same = [_distance(engine, vectors[a], vectors[b]) for a, b in itertools.combinations(SAME, 2)]
    different = [
        _distance(engine, vectors[a], vectors[b])
        for a, b in itertools.combinations(SAME + OTHERS, 2)
        if not (a in SAME and b in SAME)
    ]
    assert max(same) < min(different), (same, different)
    threshold = engine.embedder_card.threshold
    assert threshold is not None
    assert max(same) <= threshold < min(different)


def test_group_photo_gives_one_face_per_person(engine: FaceEngine) -> None:
    image = read_image(photo("t1.jpg"))
    faces = engine.detect(image)
    assert len(faces) == 6
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert face.landmarks.shape == (5, 2)
        assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
        assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
        left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    centres = np.array([((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(6) * 1e9
    assert gaps.min() > 100  # six different places, no duplicate boxes
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    # The six people are six identities for the embedder too.
    vectors = engine.embed(image, faces)
    threshold = engine.embedder_card.threshold
    assert threshold is not None
    pairs = itertools.combinations(range(6), 2)
    assert min(_distance(engine, vectors[i], vectors[j]) for i, j in pairs) > threshold


def test_faces_below_the_minimum_size_are_dropped() -> None:
    image = read_image(photo("t1.jpg"))
    # About 30 px faces: found with a 15 px minimum, all dropped with the default 40 px.
    small = np.asarray(
        cv2.resize(image, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA), dtype=np.uint8
    )
    permissive = load_engine(build_models(), threads=2, min_face_px=15).detect(small)
    assert len(permissive) >= 5
    assert all(f.size < 40 for f in permissive)
    assert load_engine(build_models(), threads=2, min_face_px=40).detect(small) == []


def test_no_faces_in_textures_or_blank_frames(engine: FaceEngine) -> None:
    assert engine.detect(read_image(photo("mask_white.jpg"))) == []
    assert engine.detect(np.zeros((480, 640, 3), dtype=np.uint8)) == []
    assert engine.embed(np.zeros((480, 640, 3), dtype=np.uint8), []).shape == (0, 192)


def test_batched_embedding_equals_one_by_one(engine: FaceEngine) -> None:
    image = read_image(photo("t1.jpg"))
    crops = engine.align(image, engine.detect(image))
    together = engine.embed_aligned(crops)  # in runs of the engine's batch size
    alone = np.concatenate([engine.embed_aligned([c]) for c in crops])
    assert together.shape == (6, 192) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_cpu_embedder_runs_a_few_faces_at_a_time() -> None:
    """A class photo's faces in one CPU run outgrow the cache (bench_models.py): capped."""
    cpu = load_engine(build_models(), threads=1, batch_size=32, providers=[CPU])
    assert cpu.embedder.batch_size == CPU_EMBED_BATCH < 32
    assert load_engine(build_models(), threads=1, batch_size=1).embedder.batch_size == 1


def test_several_photos_embed_in_one_batch_like_one_by_one(engine: FaceEngine) -> None:
    photos = []
    for name in ("t1.jpg", "obama.jpg", "mask_white.jpg", "biden.jpg"):
        image = read_image(photo(name))
        photos.append((image, engine.detect(image)))
    together = engine.embed_photos(photos)
    assert [len(v) for v in together] == [6, 1, 0, 1]
    for (image, faces), vectors in zip(photos, together, strict=True):
        np.testing.assert_allclose(vectors, engine.embed(image, faces), atol=1e-4)


def test_wrong_crop_size_is_refused(engine: FaceEngine) -> None:
    with pytest.raises(ValueError, match="crops must be"):
        engine.embed_aligned([np.zeros((150, 150, 3), dtype=np.uint8)])  # dlib's size, not 112
