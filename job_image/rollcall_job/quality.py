"""The face-quality gate: a face too small, blurred, turned, doubtful or covered never gets a name.

An embedding of a poor face is still a vector, and its nearest student is still *someone*: a
masked or blurred face lands near whoever the gallery holds, often within the threshold (measured
in issue #10: a masked stranger was nearer an enrolled man than that man masked). So the rule asks
a person to look (``needs_review``) instead of trusting such a distance.

Every measure is taken on a *canonical crop*: the face aligned by its five landmarks to the
112x112 ArcFace template, whatever the embedder, so one set of limits serves every card. Each is
simple enough to explain to a teacher:

- ``small``: the detector's box is under ``min_face_px`` (embedders collapse below ~40 px);
- ``detector_score``: the detector itself was unsure;
- ``pose``: the five landmarks fit the frontal template badly (a turned or tilted-away face, or
  landmarks the detector guessed), as the alignment's residual over the eye distance;
- ``blur``: the variance of the Laplacian of the crop's grey inner face, after scaling its
  contrast to a fixed spread (so a dim photo is not called blurred);
- ``occluded_lower_face``: the chin does not look like the same skin as the bridge of the nose
  (medians of YCrCb over each): its hue (the angle of its chroma Cr, Cb) is far from the bridge's
  (a blue or green mask), or it has lost most of the bridge's chroma (a white, grey or black mask
  on a colour photo), or its brightness is far from the bridge's (a white or black mask in a
  greyscale photo). The chin rather than the mouth, because lips are redder than skin; hue and
  relative chroma rather than plain chroma distance, because an over-exposed photo bleaches the
  bridge more than the chin. Limits: a skin-coloured mask; a mask of the skin's grey in a
  greyscale photo. Measured by ``bench/quality_gate.py`` (see its output in the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job.align import warp_face
from rollcall_job.models.cards import ARCFACE_TEMPLATE_112

ImageBGR = npt.NDArray[np.uint8]
CROP = (112, 112)
_TEMPLATE = np.asarray(ARCFACE_TEMPLATE_112, dtype=np.float64)
_EYE_PX = float(np.linalg.norm(_TEMPLATE[1] - _TEMPLATE[0]))
# Regions of the canonical crop (x1, y1, x2, y2): between the eyes down the bridge of the nose
# (above any mask's top edge), the chin (under any mask), and the inner face for blur.
BRIDGE = (48, 34, 64, 54)
CHIN = (40, 100, 72, 112)
INNER = (28, 36, 84, 100)


@dataclass(frozen=True)
class QualityGate:
    """The limits a face must meet to be named; ``off()`` disables every test."""

    min_face_px: float = 40.0
    min_detector_score: float = 0.8
    max_pose_residual: float = 0.3  # landmark fit residual / eye distance
    min_sharpness: float = 40.0  # Laplacian variance at a fixed contrast
    max_chin_hue_deg: float = 65.0  # hue angle between chin and bridge chroma
    min_chin_chroma_ratio: float = 0.35  # chin chroma / bridge chroma
    chin_luma: tuple[float, float] = (0.5, 1.1)  # chin / bridge median brightness

    @classmethod
    def off(cls) -> QualityGate:
        """Every test disabled (for generated test faces, which are flat colour squares)."""
        inf = float("inf")
        return cls(0.0, 0.0, inf, 0.0, 180.0, 0.0, (0.0, inf))


@dataclass(frozen=True)
class Measures:
    """One face's quality figures (see the module docstring)."""

    face_px: float
    detector_score: float
    pose_residual: float
    sharpness: float
    chin_hue_deg: float | None  # None: chin or bridge too grey for a hue
    chin_chroma_ratio: float | None  # None: bridge too grey to compare
    chin_luma: float  # chin / bridge median brightness


def canonical_crop(image: ImageBGR, landmarks: npt.ArrayLike) -> ImageBGR:
    """The face aligned to the 112x112 ArcFace template (the same crop for every card)."""
    return warp_face(image, landmarks, ARCFACE_TEMPLATE_112, CROP)


def pose_residuals(landmarks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``pose_residual`` of (n, 5, 2) landmarks at once.

    The least-squares similarity onto the template in closed form (in 2-D it is a * I + b * J;
    the same fit as ``align.similarity_transform``'s Umeyama, never a reflection), vectorised
    over faces: a frame's faces cost one pass instead of an SVD each.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, len(_TEMPLATE), 2)
    sc = pts - pts.mean(axis=1, keepdims=True)
    dc = _TEMPLATE - _TEMPLATE.mean(axis=0)
    var = (sc**2).sum(axis=(1, 2))
    if len(var) and float(var.min()) <= 1e-12 * len(_TEMPLATE):
        raise ValueError("source points are degenerate (all equal)")
    a = (sc * dc).sum(axis=(1, 2)) / var
    b = (sc[..., 0] * dc[:, 1] - sc[..., 1] * dc[:, 0]).sum(axis=1) / var
    sx, sy = sc[..., 0], sc[..., 1]
    ex = a[:, None] * sx - b[:, None] * sy - dc[:, 0]
    ey = b[:, None] * sx + a[:, None] * sy - dc[:, 1]
    return np.asarray(np.sqrt((ex**2 + ey**2).mean(axis=1)) / _EYE_PX, dtype=np.float64)


def pose_residual(landmarks: npt.ArrayLike) -> float:
    """RMS distance of the aligned landmarks from the template, in eye distances."""
    return float(pose_residuals(np.asarray(landmarks)[None])[0])


def _regions(
    crops: npt.NDArray[np.uint8], box: tuple[int, int, int, int], code: int
) -> npt.NDArray[np.uint8]:
    """(n, h, w, c) of one region of every (n, 112, 112, 3) crop, converted by one cvtColor."""
    x1, y1, x2, y2 = box
    n = len(crops)
    part = np.ascontiguousarray(crops[:, y1:y2, x1:x2]).reshape(n * (y2 - y1), x2 - x1, 3)
    out = np.asarray(cv2.cvtColor(part, code), dtype=np.uint8)
    return out.reshape(n, y2 - y1, x2 - x1, -1)


def _sharpness(inner_grey: npt.NDArray[np.uint8]) -> float:
    """Laplacian variance at std 40 of one grey inner face. The Laplacian is linear and zero on a
    constant (reflected border), so Lap((g - mean) * k) = k * Lap(g): taken on the uint8 grey
    levels, exact, with no float copy of the region."""
    std = float(inner_grey.std())
    if std < 1e-6:
        return 0.0
    lap = cv2.Laplacian(inner_grey, cv2.CV_64F)
    return float(lap.var()) * (40.0 / std) ** 2


def sharpness(crop: ImageBGR) -> float:
    """Variance of the Laplacian of the inner face, its grey levels first stretched to std 40."""
    return _sharpness(_regions(np.asarray(crop)[None], INNER, cv2.COLOR_BGR2GRAY)[0, ..., 0])


# Below these chroma magnitudes (YCrCb units from grey) a hue, or a loss of chroma, means nothing.
MIN_HUE_CHROMA = 6.0
MIN_BRIDGE_CHROMA = 10.0


def _chin_vs_bridge(crops: npt.NDArray[np.uint8]) -> list[tuple[float | None, float | None, float]]:
    """``chin_vs_bridge`` of (n, 112, 112, 3) crops: two small cvtColors and two medians in all
    (the medians of the uint8 values equal those of their float64 copies)."""
    n = len(crops)
    bridge = np.median(_regions(crops, BRIDGE, cv2.COLOR_BGR2YCrCb).reshape(n, -1, 3), axis=1)
    chin = np.median(_regions(crops, CHIN, cv2.COLOR_BGR2YCrCb).reshape(n, -1, 3), axis=1)
    out: list[tuple[float | None, float | None, float]] = []
    for br, ch in zip(bridge, chin, strict=True):
        b, c = br[1:] - 128.0, ch[1:] - 128.0
        nb, nc = float(np.hypot(*b)), float(np.hypot(*c))
        hue = None
        if min(nb, nc) >= MIN_HUE_CHROMA:
            hue = float(np.degrees(np.arccos(np.clip(float(b @ c) / (nb * nc), -1.0, 1.0))))
        ratio = nc / nb if nb >= MIN_BRIDGE_CHROMA else None
        out.append((hue, ratio, float(ch[0] / max(br[0], 1.0))))
    return out


def chin_vs_bridge(crop: ImageBGR) -> tuple[float | None, float | None, float]:
    """(hue angle in degrees, chroma ratio, brightness ratio) of the chin's median YCrCb to the
    bridge's; the first two None where the colours are too grey to say."""
    return _chin_vs_bridge(np.asarray(crop)[None])[0]


def measure_crops(
    crops: Sequence[ImageBGR],
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    landmarks: Sequence[npt.ArrayLike],
) -> list[Measures]:
    """The measures of a photo's faces from their canonical crops (``canonical_crop``, or an
    embedder's own crops when its card uses the same template and size: one warp for both)."""
    if len(crops) == 0:
        return []
    batch = np.stack([np.asarray(c, dtype=np.uint8) for c in crops])
    if batch.shape[1:] != (CROP[1], CROP[0], 3):
        raise ValueError(f"canonical crops are {CROP} BGR, got {batch.shape[1:]}")
    greys = _regions(batch, INNER, cv2.COLOR_BGR2GRAY)[..., 0]
    poses = pose_residuals(np.stack([np.asarray(m, dtype=np.float64) for m in landmarks]))
    chins = _chin_vs_bridge(batch)
    return [
        Measures(
            face_px=float(min(box[2] - box[0], box[3] - box[1])),
            detector_score=float(score),
            pose_residual=float(pose),
            sharpness=_sharpness(grey),
            chin_hue_deg=hue,
            chin_chroma_ratio=ratio,
            chin_luma=luma,
        )
        for box, score, pose, grey, (hue, ratio, luma) in zip(
            boxes, scores, poses, greys, chins, strict=True
        )
    ]


def measure(
    image: ImageBGR,
    box: Sequence[float],
    score: float,
    landmarks: npt.ArrayLike,
    gate: QualityGate,
) -> Measures:
    return measure_crops([canonical_crop(image, landmarks)], [box], [score], [landmarks])[0]


def verdict(m: Measures, gate: QualityGate) -> str | None:
    """The first test the face fails (the reason reported as ``low_quality:<why>``), or None.

    Each test is written as "not within the limit", so a measure that came out NaN (landmarks or
    a score the detector could not give) fails it instead of passing every comparison.
    """
    if not m.face_px >= gate.min_face_px:
        return "small"
    if not m.detector_score >= gate.min_detector_score:
        return "detector_score"
    if not m.pose_residual <= gate.max_pose_residual:
        return "pose"
    if not m.sharpness >= gate.min_sharpness:
        return "blur"
    low, high = gate.chin_luma
    if (
        (m.chin_hue_deg is not None and not m.chin_hue_deg <= gate.max_chin_hue_deg)
        or (
            m.chin_chroma_ratio is not None
            and not m.chin_chroma_ratio >= gate.min_chin_chroma_ratio
        )
        or not low <= m.chin_luma <= high
    ):
        return "occluded_lower_face"
    return None


def check(
    image: ImageBGR,
    box: Sequence[float],
    score: float,
    landmarks: npt.ArrayLike,
    gate: QualityGate,
) -> str | None:
    """Why this face fails ``gate``, or None when it may be named."""
    return verdict(measure(image, box, score, landmarks, gate), gate)


def check_crops(
    crops: Sequence[ImageBGR],
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    landmarks: Sequence[npt.ArrayLike],
    gate: QualityGate,
) -> list[str | None]:
    """``check`` for a photo's faces at once, from their canonical crops (``measure_crops``)."""
    return [verdict(m, gate) for m in measure_crops(crops, boxes, scores, landmarks)]
