"""``FaceEngine.prepare`` feeds the embedder what its card says: (pixel * scale - mean) / std in the
card's colour order and layout, whichever card (the shipped ones and the other combinations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.faces import FaceEngine, open_detector
from rollcall_job.models.build import build_models
from rollcall_job.models.cards import EMBEDDER_CARD, ModelCard, detector_card_name, load_card
from rollcall_job.runtime import load_model


def _reference(card: ModelCard, batch_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """The card's normalisation spelled out, in float64."""
    x = batch_bgr[..., ::-1] if card.colour == "RGB" else batch_bgr
    y = (x.astype(np.float64) * card.scale - np.asarray(card.mean)) / np.asarray(card.std)
    return np.asarray(y.transpose(0, 3, 1, 2) if card.layout == "NCHW" else y, np.float64)


@pytest.fixture(scope="module")
def models() -> Path:
    return build_models()


@pytest.mark.parametrize(
    ("card_dir", "changes"),
    [
        ("", {}),  # the default, MobileFaceNet: NCHW, RGB, (x - 127.5) / 128
        ("dlib-resnet-v1", {}),  # NHWC, RGB, raw pixels
        ("", {"layout": "NHWC", "colour": "BGR"}),
        ("", {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}),
        ("dlib-resnet-v1", {"layout": "NCHW", "colour": "BGR", "mean": (104.0, 117.0, 123.0)}),
    ],
)
def test_prepare_is_the_cards_normalisation(
    models: Path, card_dir: str, changes: dict[str, object]
) -> None:
    folder = models / card_dir
    card = load_card(folder / EMBEDDER_CARD)
    detector = open_detector(load_card(folder / detector_card_name(None)), folder, threads=1)
    embedder = load_model(card.path("model", folder), threads=1)
    variant = card.model_copy(update=changes)
    engine = FaceEngine(load_card(folder / detector_card_name(None)), variant, detector, embedder)
    assert variant.input_size is not None
    w, h = variant.input_size
    batch = np.random.default_rng(7).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    batch[0, 0, 0] = (0, 128, 255)  # a pixel whose channels differ, at a known place
    got = engine.prepare(batch)
    want = _reference(variant, batch)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
