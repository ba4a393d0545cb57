"""The decision rule on real photos with the default engine: nobody absent is marked present.

Issue #10 measured absent students marked present (enrolled people blacked out of a group photo
were still "seen") and masked faces given confident wrong names. Here the people of insightface's
six-person group photo are enrolled from a mirrored, darkened copy of it; then subsets of them are
blacked out of the original and identified (none of them may be present, and every name given must
be the right face), and masked copies of real faces must come out as ``needs_review``, not names.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.faces import DetectedFace, FaceEngine, load_engine, read_image
from rollcall_job.gallery import Gallery, encode
from rollcall_job.models import evaluation as ev
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import EmbedderSpec, embedder_spec, identify

pytestmark = pytest.mark.models

Box = tuple[float, float, float, float]
Image = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    return load_engine(build_models(), threads=2, batch_size=8)


@pytest.fixture(scope="module")
def spec(engine: FaceEngine) -> EmbedderSpec:
    return embedder_spec(engine.embedder_card)


def _enrol_views(engine: FaceEngine, image: Image, faces: Sequence[DetectedFace]) -> list[Any]:
    """One template per face, from a mirrored and darkened copy of the photo (not the probe)."""
    rows = []
    for f in faces:
        mirrored, lm = ev.flip(image, f.landmarks)
        dark, lm = ev.darken(mirrored, lm, 0.6)
        rows.append(engine.embed(dark, [DetectedFace(f.box, f.score, lm)])[0])
    return rows


def _identify(
    engine: FaceEngine, spec: EmbedderSpec, folder: Path, gallery: Gallery, roster: list[str]
) -> dict[str, Any]:
    out = identify(
        engine,
        list_photos(folder),
        gallery,
        roster=roster,
        threshold=spec.threshold,
        margin=spec.margin,
        max_bytes=1 << 24,
    )
    return out.documents


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _write(path: Path, image: Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_students_blacked_out_of_the_group_photo_are_never_present(
    engine: FaceEngine, spec: EmbedderSpec, tmp_path: Path
) -> None:
    group = read_image(photo("t1.jpg"))
    faces = engine.detect(group)
    assert len(faces) == 6
    ids = [f"s{i}" for i in range(6)]
    gallery = Gallery.from_rows(
        spec.meta,
        [
            (sid, encode(v, spec.meta.dim))
            for sid, v in zip(ids, _enrol_views(engine, group, faces), strict=True)
        ],
    )
    subsets = [*itertools.combinations(range(6), 3), *((i,) for i in range(6))]
    named = 0
    for n, gone in enumerate(subsets):
        folder = tmp_path / f"trial-{n}"
        _write(folder / "class.jpg", ev.black_out(group, [faces[i].box for i in gone]))
        docs = _identify(engine, spec, folder, gallery, ids)
        present = {p["student"] for p in docs["attendance"]["present"]}
        assert not present & {ids[i] for i in gone}, f"absent {gone} marked present"
        for face in docs["photos"][0]["faces"]:
            if face["decision"] == "matched":  # a name is always the face enrolled there
                own = max(range(6), key=lambda i: _iou(face["box"], faces[i].box))
                assert face["student"] == ids[own] and own not in gone
                named += 1
    # the rule does not buy safety by naming nobody: most faces still present are named
    still_there = sum(6 - len(g) for g in subsets)
    assert named >= still_there * 3 // 4, (named, still_there)


MASK_PHOTOS = ("obama2.jpg", "biden.jpg", "Tom_Hanks_54745.png", "astronaut.png")
ENROLLED = {"obama": "obama.jpg", "biden": "biden.jpg", "hanks": "Tom_Hanks_54745.png"}


@pytest.fixture(scope="module")
def gallery(engine: FaceEngine, spec: EmbedderSpec) -> Gallery:
    """Three people, each enrolled from their own photo (obama from another photo of him)."""
    rows = []
    for sid, name in ENROLLED.items():
        image = read_image(photo(name))
        (row,) = _enrol_views(engine, image, engine.detect(image))
        rows.append((sid, encode(row, spec.meta.dim)))
    return Gallery.from_rows(spec.meta, rows)


@pytest.mark.parametrize("colour", ev.MASK_COLOURS_BGR, ids=["light-blue", "white", "black"])
def test_a_masked_face_needs_review_and_is_never_named(
    engine: FaceEngine,
    spec: EmbedderSpec,
    gallery: Gallery,
    tmp_path: Path,
    colour: tuple[int, int, int],
) -> None:
    folder = tmp_path / "class"
    for name in MASK_PHOTOS:  # three enrolled people masked, and a stranger (the astronaut)
        image = read_image(photo(name))
        (face,) = engine.detect(image)
        _write(folder / Path(name).with_suffix(".jpg"), ev.mask(image, face.landmarks, colour)[0])
    docs = _identify(engine, spec, folder, gallery, list(ENROLLED))
    faces = [f for p in docs["photos"] for f in p["faces"]]
    # the detector may miss a masked face (one of the four, measured): missed is never named,
    # but most must be found for this test to show the gate at work
    assert len(faces) >= len(MASK_PHOTOS) - 1
    assert [f["decision"] for f in faces] == ["needs_review"] * len(faces)
    assert {f["rule"] for f in faces} == {"low_quality:occluded_lower_face"}
    att = docs["attendance"]
    assert att["present"] == [] and docs["summary"]["needs_review"] == len(faces)
    # the candidates still say who a reviewer should compare with, nearest first
    for f in faces:
        scores = [c["score"] for c in f["candidates"]]
        assert scores == sorted(scores) and len(scores) == 3


def test_the_unmasked_photos_are_named(
    engine: FaceEngine, spec: EmbedderSpec, gallery: Gallery, tmp_path: Path
) -> None:
    """The control of the masked test: the same photos bare are named correctly."""
    folder = tmp_path / "class"
    for name in ("obama2.jpg", "astronaut.png"):
        _write(folder / Path(name).with_suffix(".jpg"), read_image(photo(name)))
    docs = _identify(engine, spec, folder, gallery, list(ENROLLED))
    by_photo = {p["photo"]: p["faces"] for p in docs["photos"]}
    assert [f["student"] for f in by_photo["obama2.jpg"]] == ["obama"]
    assert [f["decision"] for f in by_photo["astronaut.jpg"]] == ["unknown"]
