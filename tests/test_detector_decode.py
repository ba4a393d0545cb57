"""The single-shot detectors' plain parts: priors, box and landmark decoding, suppression, the
pyramid, padding, and reading the RetinaFace weights out of Python source without running it."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.models.cards import CenterFaceSettings, PyramidSettings, RetinaFaceSettings
from rollcall_job.models.centerface import decode as centerface_decode
from rollcall_job.models.detection import (
    Detections,
    Span,
    padded_input,
    pyramid_scales,
    spans,
    suppress,
)
from rollcall_job.models.detector_build import bytes_literal
from rollcall_job.models.retinaface import decode, decode_boxes, decode_landmarks, priors
from rollcall_job.models.sdists import FetchError

STEPS = (8, 16, 32)
SIZES = ((16, 32), (64, 128), (256, 512))


def f32(rows: list[list[float]]) -> npt.NDArray[np.float32]:
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize(
    ("height", "width", "count"),
    [
        (32, 32, (16 + 4 + 1) * 2),
        (64, 96, (8 * 12 + 4 * 6 + 2 * 3) * 2),
        (480, 640, (60 * 80 + 30 * 40 + 15 * 20) * 2),
        (33, 33, (25 + 9 + 4) * 2),  # partial cells count (ceil), as the network's padding does
    ],
)
def test_prior_count_is_two_per_cell_of_each_feature_map(
    height: int, width: int, count: int
) -> None:
    assert priors(height, width, STEPS, SIZES).shape == (count, 4)


def test_priors_are_row_major_cells_with_sizes_innermost() -> None:
    p = priors(32, 64, STEPS, SIZES)
    # stride 8: 4 rows x 8 cols, two sizes per cell
    np.testing.assert_array_equal(
        p[:4], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16], [12, 4, 32, 32]]
    )
    np.testing.assert_array_equal(p[16], [4, 12, 16, 16])  # second row starts after 8 cells
    stride16 = p[64:]
    np.testing.assert_array_equal(stride16[0], [8, 8, 64, 64])
    np.testing.assert_array_equal(p[-1], [48, 16, 512, 512])  # last stride-32 cell, larger size


@pytest.mark.parametrize(
    ("loc", "prior", "expected"),
    [
        ([0, 0, 0, 0], [50, 40, 16, 16], [42, 32, 58, 48]),  # zero offsets: the prior itself
        ([1, -1, 0, 0], [50, 40, 20, 20], [42, 28, 62, 48]),  # centre moves by 0.1 * size
        ([0, 0, 5, 0], [50, 40, 10, 10], [50 - 5 * np.e, 35, 50 + 5 * np.e, 45]),  # exp(0.2*5)
    ],
)
def test_decode_boxes(loc: list[float], prior: list[float], expected: list[float]) -> None:
    got = decode_boxes(f32([loc]), f32([prior]), (0.1, 0.2))
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)


def test_decode_landmarks_offsets_each_point_from_the_prior_centre() -> None:
    pre = f32([[0, 0, 1, 0, 0, 1, -1, 0, 0, -1]])
    got = decode_landmarks(pre, f32([[100, 50, 20, 40]]), (0.1, 0.2))
    np.testing.assert_allclose(got[0], [[100, 50], [102, 50], [100, 54], [98, 50], [100, 46]])


def test_decode_keeps_only_priors_above_the_score_threshold() -> None:
    settings = RetinaFaceSettings(score_threshold=0.5)
    n = len(priors(32, 32, settings.steps, settings.min_sizes))
    loc = np.zeros((1, n, 4), np.float32)
    conf = np.tile(f32([[0.9, 0.1]]), (1, n, 1))
    conf[0, 3] = [0.2, 0.8]  # the second size of the second cell: centre (12, 4), 32 px
    marks = np.zeros((1, n, 10), np.float32)
    found = decode([loc, conf, marks], 32, 32, settings)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [-4, -12, 28, 20])
    np.testing.assert_allclose(found.landmarks[0], [[12, 4]] * 5)
    assert found.scores[0] == pytest.approx(0.8)


def test_decode_refuses_outputs_that_do_not_match_the_anchor_config() -> None:
    settings = RetinaFaceSettings()
    outputs = [np.zeros((1, 10, k), np.float32) for k in (4, 2, 10)]
    with pytest.raises(ValueError, match="anchor config"):
        decode(outputs, 32, 32, settings)


def test_centerface_decode_reads_size_offset_and_landmarks_at_peaks() -> None:
    rows, cols = 4, 6
    heat = np.zeros((1, 1, rows, cols), np.float32)
    heat[0, 0, 2, 3] = 0.9
    heat[0, 0, 0, 0] = 0.4  # below the threshold
    scale = np.zeros((1, 2, rows, cols), np.float32)
    scale[0, :, 2, 3] = [np.log(5.0), np.log(4.0)]  # height 20 px, width 16 px at stride 4
    offset = np.zeros((1, 2, rows, cols), np.float32)
    offset[0, :, 2, 3] = [0.25, 0.5]  # (y, x) in cells
    marks = np.zeros((1, 10, rows, cols), np.float32)
    marks[0, :, 2, 3] = [0.5, 0.25, 0.5, 0.75, 0, 0, 1, 0, 1, 1]  # (y, x) fractions of the box
    found = centerface_decode([heat, scale, offset, marks], CenterFaceSettings())
    assert len(found) == 1 and found.scores[0] == pytest.approx(0.9)
    cx, cy = (3 + 0.5 + 0.5) * 4, (2 + 0.25 + 0.5) * 4
    np.testing.assert_allclose(found.boxes[0], [cx - 8, cy - 10, cx + 8, cy + 10], rtol=1e-5)
    x1, y1 = cx - 8, cy - 10
    np.testing.assert_allclose(
        found.landmarks[0],
        [[x1 + 4, y1 + 10], [x1 + 12, y1 + 10], [x1, y1], [x1, y1 + 20], [x1 + 16, y1 + 20]],
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    ("boxes", "scores", "iou", "kept"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], 0.4, [0]),  # IoU 0.68: one face
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.7, 0.8], 0.4, [1]),  # the better one stays
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.4, [0, 1]),  # IoU 1/3: two faces
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.8, 0.9], 0.3, [1]),  # stricter threshold
        ([[0, 0, 10, 10], [50, 50, 60, 60], [51, 51, 61, 61]], [0.5, 0.6, 0.9], 0.4, [2, 0]),
        ([], [], 0.4, []),
    ],
)
def test_suppress(
    boxes: list[list[float]], scores: list[float], iou: float, kept: list[int]
) -> None:
    n = len(scores)
    found = Detections(
        f32(boxes).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.arange(n * 10, dtype=np.float32).reshape(n, 5, 2),
    )
    got = suppress(found, iou)
    np.testing.assert_array_equal(got.scores, np.asarray(scores, np.float32)[kept])
    np.testing.assert_array_equal(got.landmarks, found.landmarks[kept])


BAND = PyramidSettings(smallest_px=24, largest_px=320, overlap=2.0)


@pytest.mark.parametrize(
    ("height", "width", "min_face", "expected"),
    [
        (480, 640, 40, [0.6]),  # a camera frame: one pass, 40 px faces at 24 px
        (886, 1280, 40, [0.6, 0.09]),  # 531 px short side > 320: a small level for close-ups
        (3000, 4000, 40, [0.6, 0.09]),  # a class photo: 40 px faces, and close-ups to 3000 px
        (480, 640, 15, [1.0, 0.15]),  # never enlarged; 480 px > 320: close-ups too
        (100, 100, 40, [0.6]),  # a small photo: one pass
        (20, 4000, 40, [0.6]),  # the short side decides whether larger faces fit
    ],
)
def test_pyramid_scales(height: int, width: int, min_face: int, expected: list[float]) -> None:
    assert pyramid_scales(height, width, min_face, BAND) == pytest.approx(expected)


def test_each_pyramid_level_covers_faces_up_to_the_short_side() -> None:
    scales = pyramid_scales(3000, 4000, 40, BAND)
    assert 40 * scales[0] >= BAND.smallest_px
    for big, small in itertools.pairwise(scales):
        # the faces too big for one level are in the next one's band, with overlap
        assert BAND.largest_px / big * small >= BAND.smallest_px * BAND.overlap - 1e-9
    assert 3000 * scales[-1] <= BAND.largest_px


def test_pyramid_band_must_be_wider_than_its_overlap() -> None:
    with pytest.raises(ValueError, match="largest_px"):
        PyramidSettings(smallest_px=100, largest_px=150, overlap=2.0)


@pytest.mark.parametrize(
    ("shape", "scale", "padded", "factors"),
    [
        ((480, 640), 1.0, (480, 640), (1.0, 1.0)),
        ((480, 640), 0.6, (288, 384), (640 / 384, 480 / 288)),
        ((100, 150), 0.5, (64, 96), (150 / 75, 100 / 50)),  # 50x75 padded up to 64x96
        ((886, 1280), 0.09, (96, 128), (1280 / 115, 886 / 80)),
    ],
)
def test_padded_input(
    shape: tuple[int, int],
    scale: float,
    padded: tuple[int, int],
    factors: tuple[float, float],
) -> None:
    image = np.full((*shape, 3), 200, np.uint8)
    out, fx, fy = padded_input(image, scale, 32)
    assert out.shape == (*padded, 3)
    assert (fx, fy) == pytest.approx(factors)
    sw, sh = round(shape[1] * scale), round(shape[0] * scale)
    assert out[:sh, :sw].min() == 200 and out[sh:].max(initial=0) == 0
    assert out[:, sw:].max(initial=0) == 0


INF = float("inf")


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (2400, 2560, 352, [Span(0, 2400, -INF, INF)]),  # fits: one tile, owns everything
        # 3000 = two equal 1696 tiles (a multiple of 32) overlapping by 392; cut mid-overlap
        (3000, 2560, 352, [Span(0, 1696, -INF, 1500), Span(1304, 3000, 1500, INF)]),
        (1600, 1024, 352, [Span(0, 992, -INF, 800), Span(608, 1600, 800, INF)]),
        # three 928 px tiles overlapping by 368
        (
            2048,
            1024,
            352,
            [
                Span(0, 928, -INF, 744),
                Span(560, 1488, 744, 1304),
                Span(1120, 2048, 1304, INF),
            ],
        ),
    ],
)
def test_spans(length: int, tile: int, overlap: int, expected: list[Span]) -> None:
    assert spans(length, tile, overlap) == expected


@pytest.mark.parametrize("length", [1056, 2400, 4000, 5600, 9248])
def test_every_face_up_to_the_overlap_is_whole_in_exactly_one_owning_tile(length: int) -> None:
    tile, overlap = 1024, 352
    parts = spans(length, tile, overlap)
    assert parts[0].start == 0 and parts[-1].end == length
    assert all(p.end - p.start <= tile and (p.end - p.start) % 32 == 0 for p in parts)
    assert all(a.end - b.start >= overlap for a, b in itertools.pairwise(parts))
    for centre in np.arange(0.5, length, 7.0):
        owners = [p for p in parts if p.lo <= centre < p.hi]
        assert len(owners) == 1
        face = min(overlap, 2 * centre, 2 * (length - centre))  # the widest that fits the photo
        assert owners[0].start <= centre - face / 2 and centre + face / 2 <= owners[0].end


def test_detections_scale_back_to_the_photo() -> None:
    marks = np.tile(np.asarray([1, 2], np.float32), (1, 5, 1))
    found = Detections(f32([[10, 20, 30, 40]]), np.asarray([0.9], np.float32), marks)
    back = found.scaled(2.0, 0.5)
    np.testing.assert_allclose(back.boxes, [[20, 10, 60, 20]])
    np.testing.assert_allclose(back.landmarks[0, 0], [2, 1])


def test_weights_literal_is_read_without_running_the_module() -> None:
    source = (
        "import os\nos.environ['ROLLCALL_PWNED'] = '1'\n"
        "OTHER = b'no'\nWEIGHTS = b'\\x08\\x06onnx'\n"
    )
    assert bytes_literal(source, "WEIGHTS") == b"\x08\x06onnx"
    import os

    assert "ROLLCALL_PWNED" not in os.environ


@pytest.mark.parametrize(
    "source",
    ["WEIGHTS = 'text, not bytes'\n", "WEIGHTS = load()\n", "def f():\n    WEIGHTS = b'x'\n"],
)
def test_weights_literal_must_be_module_level_bytes(source: str) -> None:
    with pytest.raises(FetchError, match="WEIGHTS"):
        bytes_literal(source, "WEIGHTS")
