"""A photo the detector or the embedder cannot digest becomes an error record in its place; the
photos around it are detected and embedded as usual."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.photos import Photo, list_photos
from rollcall_job.pipeline import detect_and_embed
from toyfaces import ToyEngine, ToyFace, photo, save

MAX_BYTES = 1 << 20


def _folder(tmp_path: Path, n: int) -> list[Photo]:
    for i in range(n):
        save(tmp_path / f"{i:02d}.png", photo([("ann", 10 + 20 * i, 10, 40)]))
    return list_photos(tmp_path)


class Failing(ToyEngine):
    """Detection fails on the photo named ``bad_detect``, embedding on ``bad_embed``."""

    def __init__(self, bad_detect: int, bad_embed: int) -> None:
        super().__init__()
        self.bad_detect, self.bad_embed = bad_detect, bad_embed
        self.embeds = 0

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> list[ToyFace]:
        if self.detect_calls == self.bad_detect:
            self.detect_calls += 1
            raise ValueError("detector")
        return super().detect(image_bgr)

    def embed(
        self, image_bgr: npt.NDArray[np.uint8], faces: list[ToyFace]
    ) -> npt.NDArray[np.float32]:
        self.embeds += 1
        if self.embeds - 1 == self.bad_embed:
            raise ValueError("embedder")
        return super().embed(image_bgr, faces)


@pytest.mark.parametrize(
    ("bad_detect", "bad_embed", "failed"), [(1, 5, {1}), (5, 2, {2}), (0, 0, {0, 1})]
)
def test_a_failing_detector_or_embedder_costs_only_its_photo(
    tmp_path: Path, bad_detect: int, bad_embed: int, failed: set[int]
) -> None:
    """``bad_embed`` counts embed calls, which skip the photo whose detection failed."""
    photos = _folder(tmp_path, 4)
    calls = []
    got = list(
        detect_and_embed(
            Failing(bad_detect, bad_embed),
            photos,
            max_bytes=MAX_BYTES,
            on_photo=lambda: calls.append(1),
        )
    )
    assert [pf.photo.name for pf in got] == [p.name for p in photos]
    assert {i for i, pf in enumerate(got) if pf.error is not None} == failed
    assert all(pf.error.reason == "engine_failed" for pf in got if pf.error is not None)
    assert all(len(pf.embeddings) == 1 for pf in got if pf.error is None)
    assert len(calls) == 4
