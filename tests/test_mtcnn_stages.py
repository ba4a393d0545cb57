"""The MTCNN cascade's plain parts: pyramid, suppression, box regression, square crops."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.models.mtcnn import (
    build_pyramid,
    crop_from_pyramid,
    crop_resized,
    nms,
    pyramid_scales,
    regress,
    square,
)


def f32(rows: list[list[float]]) -> npt.NDArray[np.float32]:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


@pytest.mark.parametrize(
    ("h", "w", "min_face", "expected_first", "expected_count"),
    [
        (480, 640, 40, 0.3, 8),  # 144 px short side at the first scale, down to >= 12
        (480, 640, 12, 1.0, 11),  # a 12 px face needs the full-size image
        (100, 100, 200, 0.06, 0),  # faces larger than the image: nothing to scan
        (40, 1000, 40, 0.3, 1),  # the short side decides
    ],
)
def test_pyramid_scales(
    h: int, w: int, min_face: int, expected_first: float, expected_count: int
) -> None:
    scales = pyramid_scales(h, w, min_face, 0.709)
    assert len(scales) == expected_count
    if scales:
        assert scales[0] == pytest.approx(expected_first)
        assert min(h, w) * scales[-1] >= 12 > min(h, w) * scales[-1] * 0.709
        assert np.allclose(np.diff(np.log(scales)), np.log(0.709))


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "mode", "kept"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], 0.5, "union", [0]),  # IoU 0.68
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.7, 0.8], 0.5, "union", [1]),  # best wins
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.5, "union", [0, 1]),  # IoU 1/3
        ([[0, 0, 10, 10], [2, 2, 6, 6]], [0.9, 0.8], 0.5, "union", [0, 1]),  # IoU 0.16
        ([[0, 0, 10, 10], [2, 2, 6, 6]], [0.9, 0.8], 0.5, "min", [0]),  # nested: dropped
        ([], [], 0.5, "union", []),
    ],
)
def test_nms(
    boxes: list[list[float]], scores: list[float], threshold: float, mode: str, kept: list[int]
) -> None:
    got = nms(f32(boxes), np.asarray(scores, dtype=np.float32), threshold, mode)
    assert got.tolist() == kept


def test_regress_moves_edges_by_fractions_of_the_box() -> None:
    got = regress(f32([[10, 20, 30, 60]]), f32([[0.1, -0.25, 0.5, 0.0]]))
    np.testing.assert_allclose(got, [[12, 10, 40, 60]])


def test_square_keeps_the_centre_and_takes_the_longer_side() -> None:
    got = square(f32([[10, 20, 30, 60], [0, 0, 8, 4]]))
    np.testing.assert_allclose(got, [[0, 20, 40, 60], [0, -2, 8, 6]])


def test_crop_resized_pads_outside_the_image_with_black() -> None:
    image = np.full((20, 20, 3), 200, dtype=np.uint8)
    crop = crop_resized(image, f32([[-10, 0, 10, 20]]), 20)  # left half outside
    assert crop.shape == (1, 20, 20, 3)
    assert crop[0, :, :9].max() == 0 and crop[0, :, 11:].min() == 200


def test_pyramid_crops_match_full_resolution_crops() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    # A smooth photo-like image: nothing finer than the 24 px crops can resolve.
    image = np.asarray(cv2.resize(base, (640, 480), interpolation=cv2.INTER_CUBIC), np.uint8)
    levels = build_pyramid(image, pyramid_scales(480, 640, 40, 0.709))
    boxes = f32([[100, 80, 300, 280], [-20, -20, 140, 140], [400, 300, 448, 348], [5, 5, 30, 30]])
    direct = crop_resized(image, boxes, 24).astype(np.int16)
    via_pyramid = crop_from_pyramid(image, levels, boxes, 24).astype(np.int16)
    assert np.abs(direct - via_pyramid).mean() < 6
