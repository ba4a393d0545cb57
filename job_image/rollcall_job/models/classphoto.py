"""A large synthetic class photo for tests and benchmarks: real photos tiled onto one canvas.

A school's camera gives 4000 px wide photos of ~30 students whose faces are 40-80 px. No
registry package ships such a photo, so one is made from real ones: copies of the six-person
group photo (insightface's ``t1.jpg``) shrunk so its faces land at chosen sizes, placed on a
grey 4000x3000 canvas. Where the faces are is known from the placement: the faces found in the
full-size source photo, mapped through each copy's scale and offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Placement:
    """One shrunk copy of the source photo on the canvas."""

    x: int
    y: int
    scale: float


# Five copies of a six-face photo with ~100 px faces, shrunk to faces of about 40-80 px:
# 30 students on a 4000x3000 canvas, as a school camera sees a class.
CLASS_LAYOUT: tuple[Placement, ...] = (
    Placement(100, 150, 0.80),
    Placement(1300, 200, 0.65),
    Placement(2400, 150, 0.55),
    Placement(300, 1500, 0.50),
    Placement(2000, 1600, 0.45),
)


def tile_photo(
    source: npt.NDArray[np.uint8],
    boxes: F32,
    layout: tuple[Placement, ...] = CLASS_LAYOUT,
    size: tuple[int, int] = (4000, 3000),
) -> tuple[npt.NDArray[np.uint8], F32]:
    """The canvas (width, height = ``size``) with a copy of ``source`` per placement, and where
    the ``boxes`` (x1, y1, x2, y2 in ``source``) land on it, one row per face per copy."""
    width, height = size
    canvas = np.full((height, width, 3), 128, dtype=np.uint8)
    placed: list[F32] = []
    for p in layout:
        small = np.asarray(
            cv2.resize(source, None, fx=p.scale, fy=p.scale, interpolation=cv2.INTER_AREA),
            np.uint8,
        )
        h, w = small.shape[:2]
        if p.x + w > width or p.y + h > height:
            raise ValueError(f"a copy at ({p.x}, {p.y}) scaled {p.scale} leaves the canvas")
        canvas[p.y : p.y + h, p.x : p.x + w] = small
        offset = np.array([p.x, p.y, p.x, p.y], np.float32)
        placed.append((boxes * np.float32(p.scale) + offset).astype(np.float32))
    return canvas, np.concatenate(placed).astype(np.float32).reshape(-1, 4)
