"""The face-quality gate's pure parts: each test's verdict from its measures, and the measures on
synthetic crops whose answer is known (the real-photo evidence is bench/quality_gate.py and
tests/test_decision_rule_photos.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rollcall_job.align import similarity_transform
from rollcall_job.models.cards import ARCFACE_TEMPLATE_112
from rollcall_job.quality import (
    BRIDGE,
    CHIN,
    INNER,
    Measures,
    QualityGate,
    chin_vs_bridge,
    measure_crops,
    pose_residual,
    pose_residuals,
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


# The gate's measures are computed in closed form, on uint8 regions and a frame's faces at once;
# these are their definitions, written the plain way (float64 copies of the whole crop, one
# Umeyama fit per face), which the fast forms must reproduce.
TEMPLATE = np.asarray(ARCFACE_TEMPLATE_112, np.float64)


def _pose_by_umeyama(lm: np.ndarray) -> float:
    m = similarity_transform(lm, TEMPLATE)
    moved = lm @ m[:, :2].T + m[:, 2]
    eye = float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))
    return float(np.sqrt(((moved - TEMPLATE) ** 2).sum(axis=1).mean()) / eye)


def _sharpness_plainly(crop: np.ndarray) -> float:
    x1, y1, x2, y2 = INNER
    inner = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)[y1:y2, x1:x2]
    if inner.std() < 1e-6:
        return 0.0
    return float(cv2.Laplacian((inner - inner.mean()) * (40.0 / inner.std()), cv2.CV_64F).var())


def _medians_plainly(crop: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    ycc = cv2.cvtColor(crop, cv2.COLOR_BGR2YCrCb).astype(np.float64)
    return np.median(ycc[y1:y2, x1:x2].reshape(-1, 3), axis=0)


def _landmarks(kind: str, rng: np.random.Generator) -> np.ndarray:
    base = TEMPLATE * 1.7 + (200.0, 90.0)
    turn = np.radians(25.0)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    kinds: dict[str, np.ndarray] = {
        "frontal": base,
        "rotated and noisy": base @ rot.T + rng.normal(0, 3, (5, 2)),
        "mirrored (a detector error)": base * (-1.0, 1.0),
        "profile": base + np.array([[0, 0], [0, 0], [60, 0], [0, 0], [0, 0]]),
        "random": rng.uniform(0, 400, (5, 2)),
    }
    return kinds[kind]


KINDS = ["frontal", "rotated and noisy", "mirrored (a detector error)", "profile", "random"]


@pytest.mark.parametrize("kind", KINDS)
def test_pose_residual_in_closed_form_is_the_umeyama_fit(kind: str) -> None:
    lm = _landmarks(kind, np.random.default_rng(KINDS.index(kind)))
    assert pose_residual(lm) == pytest.approx(_pose_by_umeyama(lm), rel=1e-9, abs=1e-12)


def test_pose_residuals_of_many_faces_are_each_faces_own() -> None:
    rng = np.random.default_rng(7)
    lms = np.stack([_landmarks(k, rng) for k in KINDS])
    assert pose_residuals(lms) == pytest.approx([_pose_by_umeyama(m) for m in lms], rel=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        pose_residuals(np.zeros((1, 5, 2)))


def _crops(rng: np.random.Generator) -> list[np.ndarray]:
    """Crops of every kind the measures branch on: textured, flat, grey, masked, dark."""
    texture = np.asarray(rng.integers(0, 256, (112, 112, 3)), np.uint8)
    masked = _face(SKIN, (235, 206, 135))
    masked[20:] = np.clip(masked[20:].astype(int) + rng.integers(-30, 30, (92, 112, 3)), 0, 255)
    grey = np.repeat(rng.integers(0, 256, (112, 112, 1)), 3, axis=2).astype(np.uint8)
    return [texture, masked, grey, _face(SKIN, SKIN), np.zeros((112, 112, 3), np.uint8)]


def test_batched_measures_equal_their_plain_definitions() -> None:
    crops = _crops(np.random.default_rng(3))
    rng = np.random.default_rng(4)
    lms = [_landmarks(KINDS[i % len(KINDS)], rng) for i in range(len(crops))]
    boxes = [(10.0, 20.0, 110.0 + i, 140.0) for i in range(len(crops))]
    got = measure_crops(crops, boxes, [0.9] * len(crops), lms)
    for crop, lm, m in zip(crops, lms, got, strict=True):
        assert m.sharpness == pytest.approx(_sharpness_plainly(crop), rel=1e-9, abs=1e-12)
        assert m.sharpness == pytest.approx(sharpness(crop), rel=1e-12, abs=1e-12)
        assert m.pose_residual == pytest.approx(_pose_by_umeyama(lm), rel=1e-9)
        assert (m.chin_hue_deg, m.chin_chroma_ratio, m.chin_luma) == chin_vs_bridge(crop)
        bridge, chin = _medians_plainly(crop, BRIDGE), _medians_plainly(crop, CHIN)
        assert m.chin_luma == float(chin[0] / max(bridge[0], 1.0))
    assert [m.face_px for m in got] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert measure_crops([], [], [], []) == []
    with pytest.raises(ValueError, match="canonical crops"):
        measure_crops([crops[0][:100]], boxes[:1], [0.9], lms[:1])
