"""The job loop aligns each face once: with an embedder on the quality gate's canonical crop (the
112x112 ArcFace template) the gate measures the embedder's own crops, in the detect-ahead thread.
Verdicts and embeddings must be exactly those of gating and embedding each face separately, with
the new default (shared crops) and with dlib (its own 150 px crop: nothing to share)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rollcall_job import quality
from rollcall_job.faces import FaceEngine, load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import detect_and_embed


@pytest.fixture(scope="module")
def engines() -> dict[str, FaceEngine]:
    models = build_models()
    return {
        "new default": load_engine(models, threads=1),
        "dlib": load_engine(models / "dlib-resnet-v1", threads=1),
    }


@pytest.mark.parametrize(("name", "shares"), [("new default", True), ("dlib", False)])
def test_gate_and_embeddings_equal_per_face_ones(
    tmp_path: Path, engines: dict[str, FaceEngine], name: str, shares: bool
) -> None:
    engine = engines[name]
    assert engine.crops_are_canonical == shares
    gate = quality.QualityGate()
    group = read_image(photo("t1.jpg"))
    masked = group.copy()  # some faces the gate stops, so a verdict of each kind is compared
    for f in engine.detect(group)[:3]:
        x1, y1, x2, y2 = (int(v) for v in f.box)
        masked[(y1 + y2) // 2 : y2, x1:x2] = (235, 206, 135)
    for i, image in enumerate((group, masked)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
    got = list(detect_and_embed(engine, list_photos(tmp_path), max_bytes=1 << 26, gate=gate))
    verdicts = []
    for pf, image in zip(got, (group, masked), strict=True):
        faces = engine.detect(image)
        want = [quality.check(image, f.box, f.score, f.landmarks, gate) for f in faces]
        assert pf.quality == want
        np.testing.assert_allclose(pf.embeddings, engine.embed(image, faces), rtol=0, atol=1e-6)
        verdicts += want
    assert None in verdicts and "occluded_lower_face" in verdicts
