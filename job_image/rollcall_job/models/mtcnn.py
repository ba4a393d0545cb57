"""MTCNN face detection in three stages (P-Net proposals, R-Net refinement, O-Net landmarks).

The ONNX files only hold the three networks; the cascade around them (image pyramid, turning
P-Net's heat map into boxes, non-maximum suppression, square crops, box regression) is written
here with numpy and OpenCV. Boxes are ``x1, y1, x2, y2`` in image pixels, 0-based, exclusive
right/bottom edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job.models.cards import ModelCard
from rollcall_job.models.detection import F32, Detections, RunFn

CELL = 12  # P-Net's receptive field
STRIDE = 2  # P-Net's output stride


def pyramid_scales(height: int, width: int, min_face_px: int, factor: float) -> list[float]:
    """Scales at which a ``min_face_px`` face fills P-Net's 12-pixel cell, then smaller ones."""
    first = CELL / float(min_face_px)
    side = min(height, width) * first
    scales: list[float] = []
    scale = first
    while side >= CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def nms(boxes: F32, scores: F32, threshold: float, mode: str = "union") -> npt.NDArray[np.intp]:
    """Indices kept by greedy non-maximum suppression, best score first.

    ``mode='min'`` divides the overlap by the smaller box (drops boxes nested in others).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    x1, y1, x2, y2 = boxes.T.astype(np.float64)
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def regress(boxes: F32, deltas: F32) -> F32:
    """Apply box regression: offsets are fractions of the box's width and height."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    size = np.concatenate([w, h, w, h], axis=1)
    return np.asarray(boxes + deltas * size, dtype=np.float32)


def square(boxes: F32) -> F32:
    """Grow each box to a square around its centre (the next stage takes square crops)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx = boxes[:, 0] + w / 2
    cy = boxes[:, 1] + h / 2
    out = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)
    return np.asarray(out, dtype=np.float32)


def crop_resized(image: npt.NDArray[np.uint8], boxes: F32, size: int) -> npt.NDArray[np.uint8]:
    """Crops (n, size, size, 3) of ``boxes``; parts outside the image are black."""
    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    img_h, img_w = image.shape[:2]
    for i, (x1f, y1f, x2f, y2f) in enumerate(np.round(boxes).astype(np.int64)):
        x1, y1, x2, y2 = int(x1f), int(y1f), int(x2f), int(y2f)
        if x2 <= x1 or y2 <= y1:
            continue
        patch = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, img_w), min(y2, img_h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        # Area averaging only pays when shrinking; enlarging small boxes is cheaper bilinear.
        shrink = patch.shape[0] > size
        out[i] = cv2.resize(
            patch, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    return out


@dataclass(frozen=True)
class Level:
    """One pyramid image and its exact per-axis scale from the original."""

    image: npt.NDArray[np.uint8]
    scale_x: float
    scale_y: float


def build_pyramid(image: npt.NDArray[np.uint8], scales: list[float]) -> list[Level]:
    """Each level shrunk from the previous one (area averaging), cheaper than from the top."""
    h, w = image.shape[:2]
    levels: list[Level] = []
    source = image
    for scale in scales:
        sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
        source = np.asarray(
            cv2.resize(source, (sw, sh), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
        levels.append(Level(source, sw / w, sh / h))
    return levels


def crop_from_pyramid(
    image: npt.NDArray[np.uint8], levels: list[Level], boxes: F32, size: int
) -> npt.NDArray[np.uint8]:
    """Like ``crop_resized`` but each box is cut from the smallest pyramid level where it is
    still at least ``size`` pixels: the same anti-aliased crop for a fraction of the work."""
    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    by_level = np.full(len(boxes), -1)
    for j, level in enumerate(levels):  # levels go from large to small
        fits = side * min(level.scale_x, level.scale_y) >= size
        by_level[fits] = j
    for j in np.unique(by_level):
        rows = np.nonzero(by_level == j)[0]
        if j < 0:
            out[rows] = crop_resized(image, boxes[rows], size)
            continue
        level = levels[int(j)]
        scaled = boxes[rows] * np.array(
            [level.scale_x, level.scale_y, level.scale_x, level.scale_y], dtype=np.float32
        )
        out[rows] = crop_resized(level.image, scaled, size)
    return out


class Mtcnn:
    """The cascade; ``pnet``/``rnet``/``onet`` run one float32 batch and return all outputs."""

    def __init__(self, card: ModelCard, pnet: RunFn, rnet: RunFn, onet: RunFn) -> None:
        if card.mtcnn is None:
            raise ValueError("not an MTCNN card")
        self.card = card
        self.settings = card.mtcnn
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self._scale = np.float32(card.scale)
        self._mean = np.asarray(card.mean, dtype=np.float32)
        self._std = np.asarray(card.std, dtype=np.float32)

    def _prepare(self, images: npt.NDArray[np.uint8]) -> F32:
        """(n, h, w, 3) in the card's colour -> normalised network input."""
        x = (images.astype(np.float32) * self._scale - self._mean) / self._std
        if self.settings.transposed:
            x = x.transpose(0, 2, 1, 3)
        if self.card.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _heat_map(self, outputs: list[F32]) -> tuple[F32, F32]:
        """P-Net outputs -> (rows, cols) face probability and (rows, cols, 4) regression."""
        reg, prob = outputs[0][0], outputs[1][0]
        if self.card.layout == "NCHW":
            reg, prob = reg.transpose(1, 2, 0), prob.transpose(1, 2, 0)
        if self.settings.transposed:
            reg, prob = reg.transpose(1, 0, 2), prob.transpose(1, 0, 2)
        return prob[..., 1], reg

    def _stage1(self, levels: list[Level]) -> F32:
        threshold = self.settings.thresholds[0]
        found: list[F32] = []
        for level in levels:
            prob, reg = self._heat_map(self.pnet(self._prepare(level.image[None])))
            rows, cols = np.nonzero(prob >= threshold)
            if rows.size == 0:
                continue
            x1 = cols * STRIDE / level.scale_x
            y1 = rows * STRIDE / level.scale_y
            boxes = np.stack(
                [x1, y1, x1 + CELL / level.scale_x, y1 + CELL / level.scale_y], axis=1
            ).astype(np.float32)
            scores = prob[rows, cols].astype(np.float32)
            keep = nms(boxes, scores, 0.5)
            cand = np.concatenate(
                [boxes[keep], scores[keep, None], reg[rows[keep], cols[keep]]], axis=1
            )
            found.append(cand.astype(np.float32))
        if not found:
            return np.zeros((0, 5), dtype=np.float32)
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = square(regress(cand[:, :4], cand[:, 5:9]))
        return np.concatenate([boxes, cand[:, 4:5]], axis=1)

    def _stage2(self, rgb: npt.NDArray[np.uint8], levels: list[Level], cand: F32) -> F32:
        if len(cand) == 0:
            return cand
        crops = crop_from_pyramid(rgb, levels, cand[:, :4], 24)
        reg, prob = self.rnet(self._prepare(crops))[:2]
        score = prob[:, 1]
        ok = score > self.settings.thresholds[1]
        boxes, score, reg = cand[ok, :4], score[ok], reg[ok]
        keep = nms(boxes, score, 0.7)
        boxes = square(regress(boxes[keep], reg[keep]))
        return np.concatenate([boxes, score[keep, None]], axis=1).astype(np.float32)

    def _stage3(self, rgb: npt.NDArray[np.uint8], levels: list[Level], cand: F32) -> Detections:
        if len(cand) == 0:
            return Detections.empty()
        crops = crop_from_pyramid(rgb, levels, cand[:, :4], 48)
        reg, marks, prob = self.onet(self._prepare(crops))[:3]
        score = prob[:, 1]
        ok = score > self.settings.thresholds[2]
        boxes, score, reg, marks = cand[ok, :4], score[ok], reg[ok], marks[ok]
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        xs = boxes[:, 0:1] + marks[:, 0:5] * w
        ys = boxes[:, 1:2] + marks[:, 5:10] * h
        landmarks = np.stack([xs, ys], axis=2).astype(np.float32)
        boxes = regress(boxes, reg)
        keep = nms(boxes, score, 0.7, mode="min")
        return Detections(boxes[keep], score[keep].astype(np.float32), landmarks[keep])

    def detect(self, image_bgr: npt.NDArray[np.uint8], min_face_px: int) -> Detections:
        """Faces at least about ``min_face_px`` wide, best first."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError("expected an (h, w, 3) BGR image")
        if self.card.colour == "RGB":
            image = np.asarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
        else:
            image = np.ascontiguousarray(image_bgr, dtype=np.uint8)
        h, w = image.shape[:2]
        scales = pyramid_scales(h, w, min_face_px, self.settings.pyramid_factor)
        levels = build_pyramid(image, scales)
        cand = self._stage1(levels)
        cand = self._stage2(image, levels, cand)
        return self._stage3(image, levels, cand)
