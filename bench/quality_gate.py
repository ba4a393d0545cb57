"""How the face-quality gate (``rollcall_job/quality.py``) treats real faces and spoiled copies.

    .venv/bin/python bench/quality_gate.py [--model-dir DIR]

Not a benchmark of speed: it prints, per kind of face, how many faces the gate lets through and
why it stops the others, so the limits in ``QualityGate`` can be checked against evidence.
Faces: every face the default detector finds in the registry photos of ``bench/eval_faces.py``
(bare faces: none should be stopped), the same faces on a 4000x3000 class photo at 40-80 px
(``models/classphoto.py``), and copies of each face spoiled one way: a flat light-blue, white or
black mask drawn over the lower face (``evaluation.mask``), insightface's real mask textures
pasted into the same outline, a Gaussian blur of a twentieth of the eye distance, and the photo
shrunk until the eyes are 16 px apart and blown back up. Every spoiled face should be stopped,
except that a shrunk face is only as blurred as a small face of a class photo; an over-exposed,
poorly re-encoded copy (a worse photo, not a covered face) should pass.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from eval_faces import PHOTOS, photo_path  # noqa: E402
from rollcall_job import quality  # noqa: E402
from rollcall_job.faces import default_model_dir, load_engine, read_image  # noqa: E402
from rollcall_job.models import evaluation as ev  # noqa: E402
from rollcall_job.models.assets import photo  # noqa: E402
from rollcall_job.models.classphoto import tile_photo  # noqa: E402

Image = npt.NDArray[np.uint8]
Spoil = Callable[[Image, npt.NDArray[np.float32]], Image]


def textured_mask(texture: Image) -> Spoil:
    """Paste a real mask texture, stretched to the mask outline's bounding box, inside it."""

    def spoil(image: Image, landmarks: npt.NDArray[np.float32]) -> Image:
        poly = ev.mask_polygon(landmarks)
        x, y, w, h = cv2.boundingRect(poly)
        out = image.copy()
        ih, iw = image.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if x1 <= x0 or y1 <= y0:
            return out
        tex = cv2.resize(texture, (w, h), interpolation=cv2.INTER_AREA)[
            y0 - y : y1 - y, x0 - x : x1 - x
        ]
        inside = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(inside, [poly], 255)
        region = inside[y0:y1, x0:x1] > 0
        out[y0:y1, x0:x1][region] = tex[region]
        return out

    return spoil


def over_exposed(image: Image) -> Image:
    """Brighter (x1.15 + 20) and re-encoded as a poor JPEG: a worse photo, not a covered face."""
    bright = cv2.convertScaleAbs(image, alpha=1.15, beta=20)
    ok, buf = cv2.imencode(".jpg", bright, [cv2.IMWRITE_JPEG_QUALITY, 55])
    assert ok
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", type=Path, default=None)
    args = ap.parse_args()
    engine = load_engine(args.model_dir or default_model_dir(), threads=2)
    gate = quality.QualityGate()
    spoils: dict[str, Spoil] = {
        **{
            f"flat mask {name}": (lambda c: lambda im, lm: ev.mask(im, lm, c)[0])(colour)
            for name, colour in zip(
                ("light blue", "white", "black"), ev.MASK_COLOURS_BGR, strict=True
            )
        },
        **{
            f"real mask texture {c}": textured_mask(read_image(photo(f"mask_{c}.jpg")))
            for c in ("white", "blue", "black", "green")
        },
        "gaussian blur": lambda im, lm: np.asarray(
            cv2.GaussianBlur(im, (0, 0), max(float(np.linalg.norm(lm[1] - lm[0])) / 20, 1.0)),
            np.uint8,
        ),
        "shrunk to 16 px eyes": lambda im, lm: ev.shrink(im, lm, 16.0)[0],
        "over-exposed, JPEG q55 (not spoiled)": lambda im, lm: over_exposed(im),
    }
    tally: dict[str, Counter[str]] = {}

    def record(kind: str, image: Image, face: object) -> None:
        box, score, lm = face.box, face.score, face.landmarks  # type: ignore[attr-defined]
        why = quality.check(image, box, score, lm, gate)
        tally.setdefault(kind, Counter())[why or "passed"] += 1

    for name, _, _ in PHOTOS:
        image = read_image(photo_path(name))
        for face in engine.detect(image):
            record("bare face", image, face)
            for kind, spoil in spoils.items():
                record(kind, spoil(image, face.landmarks), face)
    group = read_image(photo("t1.jpg"))
    boxes = np.array([f.box for f in engine.detect(group)], np.float32)
    canvas, _ = tile_photo(group, boxes)
    for face in engine.detect(canvas):
        record("class photo face (40-80 px)", canvas, face)
    print(f"detector {engine.detector_card.id}; gate {gate}")
    print(f"{'faces':38s} {'n':>4s} {'passed':>7s}  stopped by")
    for kind, counts in tally.items():
        stopped = ", ".join(f"{k} {v}" for k, v in counts.most_common() if k != "passed")
        print(f"{kind:38s} {sum(counts.values()):4d} {counts['passed']:7d}  {stopped}")


if __name__ == "__main__":
    main()
