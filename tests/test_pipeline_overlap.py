"""The job's photo loop detects the next photo while it embeds this one and looks no further
ahead than that one photo (so at most two decoded photos are alive); a photo the decoder, the
detector or the embedder cannot digest still becomes an error record in its place."""

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
    """Embedding photo i waits until photo i+1's detection has started: the wait gives up (and
    records False) unless detection runs beside embedding. It also waits, briefly, for photo
    i+2's detection, which must not start before photo i+1 is handed over."""

    def __init__(self, photos: int, too_far_wait_s: float = 0.0) -> None:
        super().__init__()
        self.photos = photos
        self.too_far_wait_s = too_far_wait_s
        self.detecting = [threading.Event() for _ in range(photos)]
        self.threads: set[str] = set()
        self.overlapped: list[bool] = []
        self.too_far: list[bool] = []

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
        if self.too_far_wait_s and i + 2 < self.photos:
            self.too_far.append(self.detecting[i + 2].wait(timeout=self.too_far_wait_s))
        return super().embed(image_bgr, faces)


def test_next_photo_is_detected_while_this_one_is_embedded(tmp_path: Path) -> None:
    photos = _folder(tmp_path, 4)
    engine = Overlapping(len(photos))
    got = list(detect_and_embed(engine, photos, max_bytes=MAX_BYTES))
    assert [pf.photo.name for pf in got] == [p.name for p in photos]
    assert engine.overlapped == [True] * 4
    assert threading.current_thread().name not in engine.threads  # detection is off this thread
    assert all(pf.error is None and pf.embeddings.shape == (1, 3) for pf in got)
    assert [pf.boxes[0][0] for pf in got] == [10 + 20 * i for i in range(4)]  # each its own


def test_the_loop_looks_one_photo_ahead_and_no_further(tmp_path: Path) -> None:
    """Photo i+2 is not detected while photo i is embedded: the consumer still holds photo i and
    photo i+1 waits for it, so a third decoded photo would be one too many. (A loop that ran
    further ahead would start it within the 0.3 s each embedding waits for it.)"""
    photos = _folder(tmp_path, 5)
    engine = Overlapping(len(photos), too_far_wait_s=0.3)
    got = list(detect_and_embed(engine, photos, max_bytes=MAX_BYTES))
    assert [pf.photo.name for pf in got] == [p.name for p in photos]
    assert engine.overlapped == [True] * 5
    assert engine.too_far == [False] * 3


class Failing(ToyEngine):
    """Detection fails on its ``bad_detect``-th call, embedding on its ``bad_embed``-th."""

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
    ("bad_detect", "bad_embed", "corrupt", "failed"),
    [
        (1, 5, None, {1: "engine_failed"}),
        (5, 2, None, {2: "engine_failed"}),
        (0, 0, None, {0: "engine_failed", 1: "engine_failed"}),
        (5, 5, 2, {2: "corrupt"}),
        (2, 5, 1, {1: "corrupt", 3: "engine_failed"}),  # detect calls skip the corrupt photo
    ],
)
def test_a_bad_file_or_failing_detector_or_embedder_costs_only_its_photo(
    tmp_path: Path, bad_detect: int, bad_embed: int, corrupt: int | None, failed: dict[int, str]
) -> None:
    """``bad_embed`` counts embed calls, which skip the photos that failed before them."""
    photos = _folder(tmp_path, 4)
    if corrupt is not None:
        photos[corrupt].path.write_bytes(b"\xff\xd8\xff\xe0garbage" * 20)
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
    assert {i: pf.error.reason for i, pf in enumerate(got) if pf.error is not None} == failed
    assert all(len(pf.embeddings) == 1 for pf in got if pf.error is None)
    assert len(calls) == 4
