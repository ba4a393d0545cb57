"""Annotated copies of photos (boxes, student ids, scores) for a person to check the job's work.

Three colours, one per verdict of the decision rule: green for a named student, amber for a face
a person should review (the caption says who it might be), red for a face that matched nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

MATCHED = (60, 180, 60)  # BGR green
REVIEW = (0, 165, 255)  # BGR amber
UNKNOWN = (40, 40, 220)  # BGR red


class Kind(Enum):
    """A face's verdict, drawn in its colour (BGR)."""

    MATCHED = MATCHED
    REVIEW = REVIEW
    UNKNOWN = UNKNOWN


@dataclass(frozen=True)
class Label:
    box: tuple[float, float, float, float]
    text: str
    kind: Kind


def draw(image_bgr: npt.NDArray[np.uint8], labels: Sequence[Label]) -> npt.NDArray[np.uint8]:
    """A copy of the photo with each face boxed and captioned; line width scales with the photo."""
    out = image_bgr.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    scale = 0.4 * thick
    for lab in labels:
        x1, y1, x2, y2 = (round(v) for v in lab.box)
        colour = lab.kind.value
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        (tw, th), base = cv2.getTextSize(lab.text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty + base), colour, cv2.FILLED)
        cv2.putText(
            out,
            lab.text,
            (x1, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return out


def output_path(out_dir: Path, photo_name: str) -> Path:
    """Where the annotated copy of ``photo_name`` goes: same relative path, always .jpg."""
    rel = Path(photo_name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"photo name escapes the output dir: {photo_name!r}")
    return out_dir / "annotated" / rel.with_suffix(".jpg")


def write(
    out_dir: Path, photo_name: str, image_bgr: npt.NDArray[np.uint8], labels: Sequence[Label]
) -> Path:
    path = output_path(out_dir, photo_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", draw(image_bgr, labels), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise OSError(f"cannot encode annotated copy of {photo_name}")
    tmp = path.with_suffix(".jpg.part")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
    return path
