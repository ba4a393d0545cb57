"""Alignment maths: the similarity fit recovers known transforms, never reflects, and the warp
puts the landmarks where the template says (also on the shrink-first path for large faces)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.align import apply_transform, similarity_transform, warp_face
from rollcall_job.models.cards import dlib_chip_template

# Five landmarks of a frontal face in some image (x, y).
FACE = np.array([[30.0, 40.0], [70.0, 41.0], [50.0, 62.0], [35.0, 80.0], [66.0, 81.0]])


def similarity(scale: float, degrees: float, tx: float, ty: float) -> npt.NDArray[np.float64]:
    a = math.radians(degrees)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


@pytest.mark.parametrize(
    ("scale", "degrees", "tx", "ty"),
    [
        (1.0, 0.0, 0.0, 0.0),  # identity
        (1.0, 0.0, 12.5, -7.0),  # translation only
        (1.0, 30.0, 0.0, 0.0),  # rotation only
        (2.5, 0.0, 0.0, 0.0),  # scale only
        (0.4, -75.0, 100.0, 3.0),  # shrink, rotate, move
        (1.7, 179.0, -20.0, 40.0),  # nearly upside down
    ],
)
def test_similarity_transform_recovers_exact_transforms(
    scale: float, degrees: float, tx: float, ty: float
) -> None:
    expected = similarity(scale, degrees, tx, ty)
    dst = apply_transform(expected, FACE)
    np.testing.assert_allclose(similarity_transform(FACE, dst), expected, atol=1e-9)


def test_similarity_transform_is_least_squares_under_noise() -> None:
    """With noise it equals the linear least-squares fit of (a, b, tx, ty) in
    [[a, -b, tx], [b, a, ty]], solved independently here."""
    rng = np.random.default_rng(7)
    dst = apply_transform(similarity(1.3, 12.0, 5.0, -4.0), FACE) + rng.normal(0, 0.5, FACE.shape)
    x, y = FACE[:, 0], FACE[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate(
        [np.stack([x, -y, one, zero], axis=1), np.stack([y, x, zero, one], axis=1)]
    )
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    expected = np.array([[a, -b, tx], [b, a, ty]])
    np.testing.assert_allclose(similarity_transform(FACE, dst), expected, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    mirrored = FACE * np.array([-1.0, 1.0])  # a left-right flip is not a pose
    fitted = similarity_transform(FACE, mirrored)
    assert np.linalg.det(fitted[:, :2]) > 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.zeros((5, 2)), FACE),  # degenerate: all points equal
        (FACE[:4], FACE),  # different counts
        (FACE[:1], FACE[:1]),  # one point fixes no rotation or scale
        (FACE.reshape(-1), FACE.reshape(-1)),  # not (n, 2)
    ],
)
def test_similarity_transform_rejects_bad_input(
    src: npt.NDArray[np.float64], dst: npt.NDArray[np.float64]
) -> None:
    with pytest.raises(ValueError):
        similarity_transform(src, dst)


def _dots(
    shape: tuple[int, int], points: npt.NDArray[np.float64], radius: int
) -> npt.NDArray[np.uint8]:
    """A black BGR image with a differently coloured disc at each point."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(points):
        image[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = (40 * (i + 1), 255, 0)
    return image


def _centres(crop: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.float64]:
    out = np.zeros((n, 2))
    for i in range(n):
        ys, xs = np.nonzero(
            (np.abs(crop[..., 0].astype(int) - 40 * (i + 1)) < 12) & (crop[..., 1] > 200)
        )
        out[i] = (xs.mean(), ys.mean())
    return out


@pytest.mark.parametrize(
    ("scale", "degrees", "radius"),
    [
        (1.0, 0.0, 3),  # face at crop size: plain warp
        (1.0, 25.0, 3),  # tilted head
        (6.0, -15.0, 14),  # face six times the crop: shrink-first path
    ],
)
def test_warp_face_moves_landmarks_onto_template(scale: float, degrees: float, radius: int) -> None:
    template = np.array(dlib_chip_template(150, 0.25))
    # Place the template's points in a larger image through a known similarity.
    placement = similarity(scale, degrees, 200.0 * scale, 150.0 * scale)
    landmarks = apply_transform(placement, template)
    size = int(600 * scale)
    image = _dots((size, size), landmarks, radius)
    crop = warp_face(image, landmarks, [tuple(p) for p in template], (150, 150))
    assert crop.shape == (150, 150, 3)
    np.testing.assert_allclose(_centres(crop, 5), template, atol=1.0)
