"""The job's photo loop overlaps detection of the next photo with embedding of this one, and a
photo the detector or the embedder cannot digest still becomes an error record in its place."""

from __future__ import annotations

import threading
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


class Overlapping(ToyEngine):
    """Embedding photo i waits until photo i+1's detection has started: it deadlocks (and the
    wait gives up) unless detection runs beside embedding."""

    def __init__(self, photos: int) -> None:
        super().__init__()
        self.photos = photos
        self.detecting = [threading.Event() for _ in range(photos)]
        self.threads: set[str] = set()
        self.overlapped: list[bool] = []

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> list[ToyFace]:
        self.threads.add(threading.current_thread().name)
        self.detecting[self.detect_calls].set()
        return super().detect(image_bgr)

    def embed(
        self, image_bgr: npt.NDArray[np.uint8], faces: list[ToyFace]
    ) -> npt.NDArray[np.float32]:
        i = len(self.overlapped)
        nxt = min(i + 1, self.photos - 1)
        self.overlapped.append(self.detecting[nxt].wait(timeout=10))
        return super().embed(image_bgr, faces)


def test_next_photo_is_detected_while_this_one_is_embedded(tmp_path: Path) -> None:
    photos = _folder(tmp_path, 4)
    engine = Overlapping(len(photos))
    got = list(detect_and_embed(engine, photos, max_bytes=MAX_BYTES))
    assert [pf.photo.name for pf in got] == [p.name for p in photos]
    assert engine.overlapped == [True] * 4
    assert threading.current_thread().name not in engine.threads  # detection is off this thread
    assert all(pf.error is None and pf.embeddings.shape == (1, 3) for pf in got)


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
