"""The face-quality gate's pure parts: each test's verdict from its measures, and the measures on
synthetic crops whose answer is known (the real-photo evidence is bench/quality_gate.py and
tests/test_decision_rule_photos.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rollcall_job.models.cards import ARCFACE_TEMPLATE_112
from rollcall_job.quality import (
    BRIDGE,
    CHIN,
    Measures,
    QualityGate,
    chin_vs_bridge,
    pose_residual,
    sharpness,
    verdict,
)

GOOD = Measures(
    face_px=90.0,
    detector_score=0.99,
    pose_residual=0.1,
    sharpness=300.0,
    chin_hue_deg=10.0,
    chin_chroma_ratio=0.9,
    chin_luma=0.85,
)


@pytest.mark.parametrize(
    ("change", "want"),
    [
        ({}, None),
        ({"face_px": 39.0}, "small"),
        ({"detector_score": 0.5}, "detector_score"),
        ({"pose_residual": 0.41}, "pose"),  # the profile face of face-api's sample2
        ({"sharpness": 11.0}, "blur"),
        ({"chin_hue_deg": 155.0}, "occluded_lower_face"),  # a light-blue mask
        ({"chin_chroma_ratio": 0.02}, "occluded_lower_face"),  # a black mask on a colour photo
        (
            {"chin_luma": 1.45, "chin_hue_deg": None, "chin_chroma_ratio": None},
            "occluded_lower_face",
        ),
        ({"chin_luma": 0.24}, "occluded_lower_face"),
        # greyscale photo, chin like the bridge: no hue or chroma to judge, and nothing wrong
        ({"chin_hue_deg": None, "chin_chroma_ratio": None}, None),
        # several failures: the first in the documented order is reported
        ({"face_px": 20.0, "sharpness": 1.0}, "small"),
    ],
)
def test_verdict(change: dict[str, float | None], want: str | None) -> None:
    m = Measures(**{**GOOD.__dict__, **change})
    assert verdict(m, QualityGate()) == want
    assert verdict(m, QualityGate.off()) is None


def test_a_frontal_face_on_the_template_has_no_pose_residual() -> None:
    lm = np.asarray(ARCFACE_TEMPLATE_112) * 2.5 + (40.0, 7.0)  # scaled and moved, not turned
    assert pose_residual(lm) == pytest.approx(0.0, abs=1e-6)
    turned = lm.copy()
    turned[2, 0] += 0.9 * (lm[1, 0] - lm[0, 0])  # the nose out past an eye: a face in profile
    assert pose_residual(turned) > QualityGate().max_pose_residual


def test_sharpness_ignores_contrast_and_falls_with_blur() -> None:
    rng = np.random.default_rng(0)
    # shading across the face (most of the contrast) plus fine detail (what blur takes away)
    shading = np.linspace(60, 200, 112)[None, :, None].repeat(112, axis=0).repeat(3, axis=2)
    texture = np.asarray(np.clip(shading + rng.uniform(-20, 20, (112, 112, 3)), 0, 255), np.uint8)
    dim = np.asarray(texture * 0.3, np.uint8)
    blurred = np.asarray(cv2.GaussianBlur(texture, (0, 0), 3.0), np.uint8)
    assert sharpness(texture) == pytest.approx(sharpness(dim), rel=0.1)
    assert sharpness(blurred) < QualityGate().min_sharpness < sharpness(texture)
    assert sharpness(np.full((112, 112, 3), 128, np.uint8)) == 0.0


def _face(skin_bgr: tuple[int, int, int], chin_bgr: tuple[int, int, int]) -> np.ndarray:
    crop = np.full((112, 112, 3), skin_bgr, np.uint8)
    x1, y1, x2, y2 = CHIN
    crop[y1:y2, x1:x2] = chin_bgr
    return crop


SKIN = (120, 150, 200)  # BGR: a light skin tone


@pytest.mark.parametrize(
    ("chin", "occluded"),
    [
        (SKIN, False),
        ((95, 120, 165), False),  # the same skin in shadow
        ((235, 206, 135), True),  # light-blue medical mask
        ((245, 245, 245), True),  # white mask
        ((40, 40, 40), True),  # black mask
        ((60, 140, 60), True),  # green cloth mask
    ],
)
def test_chin_against_bridge(chin: tuple[int, int, int], occluded: bool) -> None:
    m = Measures(90.0, 0.99, 0.1, 300.0, *chin_vs_bridge(_face(SKIN, chin)))
    assert (verdict(m, QualityGate()) == "occluded_lower_face") == occluded
    assert BRIDGE[3] <= CHIN[1]  # the regions do not overlap
