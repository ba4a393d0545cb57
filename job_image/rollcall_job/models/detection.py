"""What every detector family returns, and the parts single-shot detectors share.

A detector takes a BGR photo and the smallest face size wanted, and returns boxes
(``x1, y1, x2, y2`` in image pixels), scores and five landmarks per face (left eye, right eye,
nose, left and right mouth corner, as seen in the image). MTCNN is a cascade with its own
pyramid; RetinaFace and CenterFace are single-shot networks with a dynamic input, so one pass
covers a band of face sizes and a short pyramid (``pyramid_scales``) covers the rest: a 4000 px
class photo with 40 px faces is read at the scale where those faces fill the network's best band,
plus a small level for close-ups. Only a level larger than the card's ``tile_px`` is cut into
tiles (``spans``), overlapping by the band's largest face so no face is lost at a seam.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job.models.cards import ModelCard, PyramidSettings

F32 = npt.NDArray[np.float32]
RunFn = Callable[[F32], list[F32]]


@dataclass(frozen=True)
class Detections:
    boxes: F32  # (n, 4) x1, y1, x2, y2
    scores: F32  # (n,)
    landmarks: F32  # (n, 5, 2)

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        )

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, rows: npt.NDArray[np.intp]) -> Detections:
        return Detections(self.boxes[rows], self.scores[rows], self.landmarks[rows])

    def shifted(self, dx: float, dy: float) -> Detections:
        """Coordinates moved by (dx, dy) (a tile back to its level)."""
        box = self.boxes + np.array([dx, dy, dx, dy], np.float32)
        marks = self.landmarks + np.array([dx, dy], np.float32)
        return Detections(box.astype(np.float32), self.scores, marks.astype(np.float32))

    def centred_in(self, x0: float, y0: float, x1: float, y1: float) -> Detections:
        """The faces whose box centre lies in [x0, x1) x [y0, y1)."""
        cx = (self.boxes[:, 0] + self.boxes[:, 2]) / 2
        cy = (self.boxes[:, 1] + self.boxes[:, 3]) / 2
        inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
        return self.take(np.nonzero(inside)[0])

    def scaled(self, fx: float, fy: float) -> Detections:
        """Coordinates multiplied per axis (a pyramid level back to the photo)."""
        box = self.boxes * np.array([fx, fy, fx, fy], np.float32)
        marks = self.landmarks * np.array([fx, fy], np.float32)
        return Detections(box.astype(np.float32), self.scores, marks.astype(np.float32))

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        return Detections(
            np.concatenate([p.boxes for p in parts]).astype(np.float32),
            np.concatenate([p.scores for p in parts]).astype(np.float32),
            np.concatenate([p.landmarks for p in parts]).astype(np.float32),
        )


class Detector(Protocol):
    """One detector family behind its card: faces at least about ``min_face_px``, best first."""

    def detect(self, image_bgr: npt.NDArray[np.uint8], min_face_px: int) -> Detections: ...


def suppress(found: Detections, iou: float) -> Detections:
    """Greedy non-maximum suppression (OpenCV's), best score first."""
    if len(found) == 0:
        return found
    xywh = np.concatenate([found.boxes[:, :2], found.boxes[:, 2:] - found.boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.astype(np.float64).tolist(), found.scores.tolist(), 0.0, iou)
    rows = np.asarray(keep, dtype=np.intp).reshape(-1)
    rows = rows[np.argsort(-found.scores[rows], kind="stable")]
    return found.take(rows)


def pyramid_scales(height: int, width: int, min_face_px: int, p: PyramidSettings) -> list[float]:
    """Scales at which to run a single-shot detector so every face from ``min_face_px`` up to the
    photo's short side lands in the network's band ``[p.smallest_px, p.largest_px]``.

    The first scale brings ``min_face_px`` to ``smallest_px`` (never enlarging past
    ``max_upscale``); each next one shrinks until the band's top reaches the short side.
    """
    if min_face_px <= 0:
        raise ValueError("min_face_px must be positive")
    scale = min(p.smallest_px / min_face_px, p.max_upscale)
    step = p.smallest_px / p.largest_px * p.overlap
    scales = [scale]
    while min(height, width) * scale > p.largest_px and scale * step * max(height, width) >= 16:
        scale *= step
        scales.append(scale)
    return scales


def padded_input(
    image: npt.NDArray[np.uint8], scale: float, multiple: int
) -> tuple[npt.NDArray[np.uint8], float, float]:
    """The photo resized by ``scale`` and padded (black, bottom/right) to sides divisible by
    ``multiple``; returns it with the exact per-axis factors back to the photo."""
    h, w = image.shape[:2]
    sw, sh = max(round(w * scale), 1), max(round(h * scale), 1)
    if (sw, sh) == (w, h):
        resized = image
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = np.asarray(cv2.resize(image, (sw, sh), interpolation=interp), np.uint8)
    pw, ph = -(-sw // multiple) * multiple, -(-sh // multiple) * multiple
    if (pw, ph) != (sw, sh):
        resized = np.asarray(
            cv2.copyMakeBorder(resized, 0, ph - sh, 0, pw - sw, cv2.BORDER_CONSTANT, value=0),
            np.uint8,
        )
    return resized, w / sw, h / sh


@dataclass(frozen=True)
class Span:
    """One tile along an axis: the input ``[start, end)`` and the part it owns ``[lo, hi)``."""

    start: int
    end: int
    lo: float
    hi: float


def spans(length: int, tile: int, overlap: int, multiple: int = 32) -> list[Span]:
    """The fewest equal tiles (sides a multiple of ``multiple``, at most ``tile``) covering
    ``[0, length)`` with neighbours overlapping by at least ``overlap``. Each owns up to the
    middle of its overlaps, so a face whose centre it owns and that is at most ``overlap`` wide
    lies whole inside it, and no face is owned twice. Equal tiles waste the least work."""
    if length <= tile:
        return [Span(0, length, -np.inf, np.inf)]
    n = -(-(length - overlap) // (tile - overlap))
    size = min(tile, -(-(length + (n - 1) * overlap) // (n * multiple)) * multiple)
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    cuts = [(a + size + b) / 2 for a, b in itertools.pairwise(starts)]  # mid-overlap
    bounds = [-np.inf, *cuts, np.inf]
    return [Span(a, a + size, bounds[i], bounds[i + 1]) for i, a in enumerate(starts)]


class SingleShot:
    """A one-network detector with a dynamic input, run once per pyramid level; subclasses
    decode the network's outputs for one level (``_decode``)."""

    def __init__(self, card: ModelCard, run: RunFn, pyramid: PyramidSettings, iou: float) -> None:
        self.card = card
        self.run = run
        self.pyramid = pyramid
        self.iou = iou
        self._mean = np.asarray(card.mean, dtype=np.float32)
        self._std = np.asarray(card.std, dtype=np.float32)
        self._scale = np.float32(card.scale)
        self._channels = card.channels_from_bgr

    def _prepare(self, image_bgr: npt.NDArray[np.uint8]) -> F32:
        """The network's input for a BGR level: ``(pixel * scale - mean) / std`` in the card's
        colour order and layout, by the same float32 operations as that formula (so the same
        bits), skipping those that are identities for the card (scale 1, mean 0, std 1).

        For NCHW, ``cv2.split`` gives contiguous planes, each written straight into its place
        with the colour swap folded into the plane order: a pass or two per plane instead of a
        colour-converted, a float, a normalised and a transposed copy of the level (RetinaFace's
        384x288 level: 0.1-0.2 against 1.2-1.6 ms of CPU).
        """
        h, w = image_bgr.shape[:2]
        if self.card.layout == "NCHW":
            out = np.empty((1, 3, h, w), dtype=np.float32)
            planes = [np.asarray(p, np.uint8) for p in cv2.split(image_bgr)]
            for c, src in enumerate(self._channels):
                self._normalise(out[0, c], planes[src], self._mean[c], self._std[c])
        else:
            out = np.empty((1, h, w, 3), dtype=np.float32)
            pixels = image_bgr
            if self.card.colour == "RGB":
                pixels = np.asarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), np.uint8)
            self._normalise(out[0], pixels, self._mean, self._std)
        return out

    def _normalise(
        self,
        dst: F32,
        pixels: npt.NDArray[np.uint8],
        mean: np.float32 | F32,
        std: np.float32 | F32,
    ) -> None:
        """``dst = (pixels * scale - mean) / std`` in place, in float32."""
        np.copyto(dst, pixels, casting="unsafe")
        if self._scale != 1:
            dst *= self._scale
        if np.any(mean != 0):
            dst -= mean
        if np.any(std != 1):
            dst /= std

    def _decode(self, outputs: Sequence[F32], height: int, width: int) -> Detections:
        raise NotImplementedError

    def detect(self, image_bgr: npt.NDArray[np.uint8], min_face_px: int) -> Detections:
        """Faces at least about ``min_face_px`` wide, best first."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError("expected an (h, w, 3) BGR image")
        image = image_bgr  # resized and tiled in BGR; _prepare orders the colours
        h, w = image.shape[:2]
        found: list[Detections] = []
        tile, overlap = self.pyramid.tile_px, self.pyramid.tile_overlap
        for scale in pyramid_scales(h, w, min_face_px, self.pyramid):
            level, fx, fy = padded_input(image, scale, self.pyramid.multiple)
            multiple = self.pyramid.multiple
            for ys in spans(level.shape[0], tile, overlap, multiple):
                for xs in spans(level.shape[1], tile, overlap, multiple):
                    part = level[ys.start : ys.end, xs.start : xs.end]
                    faces = self._decode(self.run(self._prepare(part)), *part.shape[:2])
                    owned = faces.shifted(xs.start, ys.start).centred_in(xs.lo, ys.lo, xs.hi, ys.hi)
                    found.append(owned.scaled(fx, fy))
        return suppress(Detections.concat(found), self.iou)
