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

from rollcall_job.align import similarity_transform, warp_face
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


def pose_residual(landmarks: npt.ArrayLike) -> float:
    """RMS distance of the aligned landmarks from the template, in eye distances."""
    pts = np.asarray(landmarks, dtype=np.float64)
    m = similarity_transform(pts, _TEMPLATE)
    moved = pts @ m[:, :2].T + m[:, 2]
    return float(np.sqrt(((moved - _TEMPLATE) ** 2).sum(axis=1).mean()) / _EYE_PX)


def _region(
    img: npt.NDArray[np.float64], box: tuple[int, int, int, int]
) -> npt.NDArray[np.float64]:
    x1, y1, x2, y2 = box
    return img[y1:y2, x1:x2]


def sharpness(crop: ImageBGR) -> float:
    """Variance of the Laplacian of the inner face, its grey levels first stretched to std 40."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    inner = _region(grey, INNER)
    std = float(inner.std())
    if std < 1e-6:
        return 0.0
    norm = (inner - inner.mean()) * (40.0 / std)
    return float(cv2.Laplacian(norm, cv2.CV_64F).var())


# Below these chroma magnitudes (YCrCb units from grey) a hue, or a loss of chroma, means nothing.
MIN_HUE_CHROMA = 6.0
MIN_BRIDGE_CHROMA = 10.0


def chin_vs_bridge(crop: ImageBGR) -> tuple[float | None, float | None, float]:
    """(hue angle in degrees, chroma ratio, brightness ratio) of the chin's median YCrCb to the
    bridge's; the first two None where the colours are too grey to say."""
    ycc = cv2.cvtColor(crop, cv2.COLOR_BGR2YCrCb).astype(np.float64)
    bridge = np.median(_region(ycc, BRIDGE).reshape(-1, 3), axis=0)
    chin = np.median(_region(ycc, CHIN).reshape(-1, 3), axis=0)
    b, c = bridge[1:] - 128.0, chin[1:] - 128.0
    nb, nc = float(np.hypot(*b)), float(np.hypot(*c))
    hue = None
    if min(nb, nc) >= MIN_HUE_CHROMA:
        hue = float(np.degrees(np.arccos(np.clip(float(b @ c) / (nb * nc), -1.0, 1.0))))
    ratio = nc / nb if nb >= MIN_BRIDGE_CHROMA else None
    return hue, ratio, float(chin[0] / max(bridge[0], 1.0))


def measure(
    image: ImageBGR,
    box: Sequence[float],
    score: float,
    landmarks: npt.ArrayLike,
    gate: QualityGate,
) -> Measures:
    crop = canonical_crop(image, landmarks)
    hue, ratio, luma = chin_vs_bridge(crop)
    return Measures(
        face_px=float(min(box[2] - box[0], box[3] - box[1])),
        detector_score=float(score),
        pose_residual=pose_residual(landmarks),
        sharpness=sharpness(crop),
        chin_hue_deg=hue,
        chin_chroma_ratio=ratio,
        chin_luma=luma,
    )


def verdict(m: Measures, gate: QualityGate) -> str | None:
    """The first test the face fails (the reason reported as ``low_quality:<why>``), or None."""
    if m.face_px < gate.min_face_px:
        return "small"
    if m.detector_score < gate.min_detector_score:
        return "detector_score"
    if m.pose_residual > gate.max_pose_residual:
        return "pose"
    if m.sharpness < gate.min_sharpness:
        return "blur"
    low, high = gate.chin_luma
    if (
        (m.chin_hue_deg is not None and m.chin_hue_deg > gate.max_chin_hue_deg)
        or (m.chin_chroma_ratio is not None and m.chin_chroma_ratio < gate.min_chin_chroma_ratio)
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
