"""Face alignment: a similarity transform from detected landmarks to a card's template.

Embedders are trained on crops where the eyes, nose and mouth sit at fixed places; the
least-squares similarity (rotation, uniform scale, translation; never a reflection) that best
maps the five detected landmarks onto the card's template reproduces that crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

Points = npt.NDArray[np.float64]
Affine2x3 = npt.NDArray[np.float64]


def similarity_transform(src: npt.ArrayLike, dst: npt.ArrayLike) -> Affine2x3:
    """Umeyama's least-squares similarity mapping ``src`` points onto ``dst`` points.

    Returns the 2x3 matrix ``M`` with ``dst ~ M @ [x, y, 1]``. A reflection is never returned,
    even when it would fit better (mirrored landmarks are a detector error, not a pose).
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 2:
        raise ValueError("need two (n, 2) point sets of the same shape, n >= 2")
    mu_s, mu_d = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - mu_s, d - mu_d
    var_s = float((sc**2).sum()) / len(s)
    if var_s <= 1e-12:
        raise ValueError("source points are degenerate (all equal)")
    cov = dc.T @ sc / len(s)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = float((sigma * sign).sum()) / var_s
    out = np.empty((2, 3), dtype=np.float64)
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def apply_transform(matrix: Affine2x3, points: npt.ArrayLike) -> Points:
    """Map (n, 2) points through a 2x3 affine matrix."""
    p = np.asarray(points, dtype=np.float64)
    return np.asarray(p @ matrix[:, :2].T + matrix[:, 2], dtype=np.float64)


def warp_face(
    image: npt.NDArray[np.uint8],
    landmarks: npt.ArrayLike,
    template: Sequence[tuple[float, float]],
    size: tuple[int, int],
) -> npt.NDArray[np.uint8]:
    """Cut the aligned crop (width, height = ``size``) for one face out of ``image``.

    When the face is much larger than the crop, the region is first shrunk with area
    averaging, as dlib does with its pyramid, so that the bilinear warp does not alias.
    """
    matrix = similarity_transform(landmarks, template)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        # Crop the source region that maps into the output, shrink it, adjust the matrix.
        inv = np.asarray(cv2.invertAffineTransform(matrix), dtype=np.float64)
        w, h = size
        corners = apply_transform(inv, [(0, 0), (w, 0), (0, h), (w, h)])
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        img_h, img_w = image.shape[:2]
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, img_w), min(y1, img_h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            shrink = 2.0 * scale  # keep about twice the output resolution for the warp
            region = image[y0:y1, x0:x1]
            new_w = max(round((x1 - x0) * shrink), 1)
            new_h = max(round((y1 - y0) * shrink), 1)
            region = np.asarray(
                cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA), dtype=np.uint8
            )
            fx, fy = new_w / (x1 - x0), new_h / (y1 - y0)
            # image point p -> region point ((p - origin) * f): fold that into the matrix
            to_region = np.array([[fx, 0.0, -x0 * fx], [0.0, fy, -y0 * fy], [0.0, 0.0, 1.0]])
            matrix = matrix @ np.linalg.inv(to_region)
            image = region
    out = cv2.warpAffine(
        image,
        matrix,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return np.asarray(out, dtype=np.uint8)
