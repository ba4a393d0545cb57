"""The job loop aligns each face once: with an embedder on the quality gate's canonical crop (the
112x112 ArcFace template) the gate measures the embedder's own crops, in the detect-ahead thread,
which also embeds the first faces of its photo (``balance.EmbedShare``). Verdicts and embeddings
must be exactly those of gating and embedding each face separately, with the new default (shared
crops) and with dlib (its own 150 px crop: nothing to share), and both threads must embed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job import quality
from rollcall_job.faces import FaceEngine, load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import detect_and_embed


class Recording(FaceEngine):
    """The real engine, noting which threads ran the embedder."""

    def __init__(self, engine: FaceEngine) -> None:
        self.__dict__.update(engine.__dict__)
        self.embedded_in: set[str] = set()

    def embed_aligned(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        self.embedded_in.add(threading.current_thread().name)
        return super().embed_aligned(crops)


@pytest.fixture(scope="module")
def engines() -> dict[str, Recording]:
    models = build_models()
    return {
        "new default": Recording(load_engine(models, threads=1)),
        "dlib": Recording(load_engine(models / "dlib-resnet-v1", threads=1)),
    }


@pytest.mark.parametrize(("name", "shares"), [("new default", True), ("dlib", False)])
def test_gate_and_embeddings_equal_per_face_ones(
    tmp_path: Path, engines: dict[str, Recording], name: str, shares: bool
) -> None:
    engine = engines[name]
    assert engine.crops_are_canonical == shares
    gate = quality.QualityGate()
    full = read_image(photo("t1.jpg"))  # at 640 px wide, where embedding outweighs detection
    group = np.asarray(
        cv2.resize(full, (640, round(640 * full.shape[0] / full.shape[1]))), np.uint8
    )
    masked = group.copy()  # some faces the gate stops, so a verdict of each kind is compared
    for f in engine.detect(group)[:3]:
        x1, y1, x2, y2 = (int(v) for v in f.box)
        masked[(y1 + y2) // 2 : y2, x1:x2] = (235, 206, 135)
    images = [group, masked] * 4
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
    got = list(detect_and_embed(engine, list_photos(tmp_path), max_bytes=1 << 26, gate=gate))
    assert engine.embedded_in == {threading.current_thread().name, "prefetch"}
    verdicts = []
    for pf, image in zip(got, images, strict=True):
        faces = engine.detect(image)
        want = [quality.check(image, f.box, f.score, f.landmarks, gate) for f in faces]
        assert pf.quality == want
        assert np.allclose(pf.embeddings, engine.embed(image, faces), rtol=0, atol=1e-6)
        verdicts += want
    assert None in verdicts and "occluded_lower_face" in verdicts
