"""The single-shot detectors' network input: ``SingleShot._prepare`` takes a BGR level and gives
what the plain formula gives (colour-convert, ``(pixel * scale - mean) / std`` in float32,
transpose), for both detector cards and the other colour, layout and normalisation settings;
and ``detect`` feeds the network the same levels and tiles as converting the photo's colours
first did."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.models.cards import ModelCard, PyramidSettings, centerface_card, retinaface_card
from rollcall_job.models.detection import F32, Detections, SingleShot

CARDS = {"retinaface": retinaface_card(), "centerface": centerface_card()}
TILED = PyramidSettings(smallest_px=8.0, largest_px=40.0, tile_px=192)  # overlap 96
IMAGENET = {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def formula(card: ModelCard, level_bgr: npt.NDArray[np.uint8]) -> F32:
    """The input as it was made before: the whole level colour-converted, then the card's
    normalisation over whole float32 arrays, then transposed and made contiguous."""
    image = level_bgr
    if card.colour == "RGB":
        image = np.asarray(cv2.cvtColor(level_bgr, cv2.COLOR_BGR2RGB), np.uint8)
    mean, std = np.asarray(card.mean, np.float32), np.asarray(card.std, np.float32)
    x = (image.astype(np.float32) * np.float32(card.scale) - mean) / std
    if card.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)


class Recorder(SingleShot):
    """A single-shot detector whose network records its inputs and finds nothing."""

    def __init__(self, card: ModelCard, pyramid: PyramidSettings) -> None:
        self.inputs: list[F32] = []
        super().__init__(card, self._record, pyramid, 0.4)

    def _record(self, x: F32) -> list[F32]:
        self.inputs.append(x.copy())
        return []

    def _decode(self, outputs: Sequence[F32], height: int, width: int) -> Detections:
        return Detections.empty()


class Before(Recorder):
    """The detector as it was: fed the photo already in the card's colours, and normalising
    with the formula (its ``_prepare`` did not convert colours)."""

    def _prepare(self, image: npt.NDArray[np.uint8]) -> F32:
        return formula(self.card.model_copy(update={"colour": "BGR"}), image)


def photo(height: int, width: int, seed: int) -> npt.NDArray[np.uint8]:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[0, 0] = (0, 128, 255)  # a pixel whose channels differ, at a known place
    return image


@pytest.mark.parametrize(
    ("family", "changes", "height", "width"),
    [
        ("retinaface", {}, 288, 384),  # as shipped: BGR, NCHW, minus (104, 117, 123)
        ("centerface", {}, 192, 256),  # as shipped: RGB, NCHW, raw pixels
        ("retinaface", {"colour": "RGB"}, 33, 17),
        ("centerface", {"colour": "BGR"}, 1, 1),
        ("retinaface", {"layout": "NHWC"}, 31, 65),
        ("centerface", {"layout": "NHWC"}, 64, 33),
        ("retinaface", {"layout": "NHWC", "colour": "RGB"}, 7, 5),
        ("centerface", IMAGENET, 45, 99),
        ("retinaface", {**IMAGENET, "colour": "BGR", "layout": "NHWC"}, 97, 13),
        ("centerface", {"mean": (127.5, 127.5, 127.5), "std": (128.0, 128.0, 128.0)}, 3, 200),
        ("retinaface", {"scale": 2.0, "mean": (0.0, 10.0, 0.0), "std": (1.0, 3.0, 0.5)}, 50, 51),
    ],
)
def test_prepare_is_the_formula(
    family: str, changes: dict[str, object], height: int, width: int
) -> None:
    card = CARDS[family].model_copy(update=changes)
    detector = Recorder(card, PyramidSettings())
    level = photo(height, width, seed=height * 1000 + width)
    got = detector._prepare(level)
    want = formula(card, level)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-6
    tile = level[height // 3 :, width // 4 :]  # a tile is a strided view of its level
    if tile.size:
        assert float(np.abs(detector._prepare(tile) - formula(card, tile)).max()) <= 1e-6


@pytest.mark.parametrize(
    ("family", "colour", "pyramid", "height", "width", "min_face_px", "runs"),
    [
        ("retinaface", "BGR", PyramidSettings(), 480, 640, 40, 1),  # one level at 0.6
        ("centerface", "RGB", PyramidSettings(smallest_px=16.0, largest_px=480.0), 480, 640, 40, 1),
        ("retinaface", "RGB", PyramidSettings(), 3000, 4000, 40, 2),  # levels 0.6 and 0.09
        # a band of 8-40 px: a 320x416 level in 3 x 4 tiles of 192 px, then three small levels
        ("centerface", "RGB", TILED, 300, 401, 8, 12 + 3),
    ],
)
def test_detect_feeds_the_same_inputs(
    family: str,
    colour: str,
    pyramid: PyramidSettings,
    height: int,
    width: int,
    min_face_px: int,
    runs: int,
) -> None:
    """Resizing, padding and tiling act on each channel alike, so swapping colours in
    ``_prepare`` rather than on the whole photo first must not change a single input."""
    card = CARDS[family].model_copy(update={"colour": colour})
    image = photo(height, width, seed=5)
    detector = Recorder(card, pyramid)
    detector.detect(image, min_face_px)
    assert len(detector.inputs) == runs
    before = Before(card, pyramid)
    converted = image if colour == "BGR" else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    before.detect(np.asarray(converted, np.uint8), min_face_px)
    assert [x.shape for x in detector.inputs] == [x.shape for x in before.inputs]
    for got, want in zip(detector.inputs, before.inputs, strict=True):
        assert float(np.abs(got - want).max()) <= 1e-6
