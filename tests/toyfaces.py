"""A tiny generated face engine for pipeline tests: a "face" is a solid colour square.

Detection finds non-grey squares (connected components) at least ``min_face_px`` wide; the
embedding is the square's centred colour, so identity = colour, and the cosine card is immune to
brightness while the Euclidean card is not. It satisfies ``rollcall_job.protocols.Engine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

BACKGROUND = (128, 128, 128)
# student id -> BGR colour of their "face"; centred colours are far apart in angle and distance
COLOURS: dict[str, tuple[int, int, int]] = {
    "ann": (250, 10, 10),
    "bob": (10, 250, 10),
    "cy": (10, 10, 250),
    "dee": (250, 250, 10),
    "eve": (10, 250, 250),
    "stranger": (250, 10, 250),
}


# Where the five landmarks sit in a face square, as fractions: a frontal face whose aligned crop
# (``quality.canonical_crop``) lies inside the square, so a toy face passes the quality gate.
TOY_LANDMARKS = ((0.35, 0.3), (0.65, 0.3), (0.5, 0.47), (0.376, 0.65), (0.626, 0.65))
# A fine +-TEXTURE checker on every face: real faces have texture, and a flat square would be
# "blurred" to the quality gate. Zero-mean, so the embedding (the mean colour) barely moves.
TEXTURE = 24


@dataclass(frozen=True)
class ToyCard:
    id: str = "toy-v1"
    metric: str | None = "cosine"
    threshold: float | None = 0.05  # cosine distance (1 - similarity)
    margin: float = 0.0
    embedding_dim: int | None = 3


@dataclass(frozen=True)
class ToyFace:
    box: tuple[float, float, float, float]
    score: float
    landmarks: npt.NDArray[np.float32]


class ToyEngine:
    def __init__(self, card: ToyCard | None = None, min_face_px: int = 20) -> None:
        self.embedder_card = card or ToyCard()
        self.min_face_px = min_face_px
        self.detect_calls = 0

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> list[ToyFace]:
        self.detect_calls += 1
        diff = np.abs(image_bgr.astype(np.int16) - np.array(BACKGROUND, np.int16)).max(axis=2)
        n, _, stats, _ = cv2.connectedComponentsWithStats((diff > 40).astype(np.uint8))
        faces = []
        for x, y, w, h, _area in stats[1:n]:
            if min(w, h) < self.min_face_px:
                continue
            lm = np.array(
                [[x + w * fx, y + h * fy] for fx, fy in TOY_LANDMARKS],
                np.float32,
            )
            faces.append(ToyFace((float(x), float(y), float(x + w), float(y + h)), 0.99, lm))
        return faces

    def embed(
        self, image_bgr: npt.NDArray[np.uint8], faces: list[ToyFace]
    ) -> npt.NDArray[np.float32]:
        rows = []
        for f in faces:
            x1, y1, x2, y2 = (int(v) for v in f.box)
            patch = image_bgr[y1:y2, x1:x2].reshape(-1, 3).astype(np.float32)
            rows.append((patch.mean(axis=0) - 128.0) / 128.0)
        return np.array(rows, np.float32).reshape(len(faces), 3)


def photo(
    faces: list[tuple[str, int, int, int]], size: tuple[int, int] = (200, 320), gain: float = 1.0
) -> npt.NDArray[np.uint8]:
    """A BGR photo with (student, x, y, side) squares on a grey background."""
    img = np.full((*size, 3), BACKGROUND, np.uint8)
    for sid, x, y, side in faces:
        colour = np.clip(np.array(COLOURS[sid], np.float32) * gain, 0, 255)
        checker = (np.indices((side, side)).sum(axis=0) % 2 * 2 - 1)[..., None] * TEXTURE
        img[y : y + side, x : x + side] = np.clip(colour + checker, 0, 255).astype(np.uint8)
    return img


def save(path: Path, image: npt.NDArray[np.uint8]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path
