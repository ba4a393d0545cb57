"""Annotated copies: boxes and captions drawn on a copy, written under the output dir only."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rollcall_job.annotate import MATCHED, REVIEW, UNKNOWN, Kind, Label, draw, output_path, write


def test_draw_boxes_in_the_verdict_colour_and_leaves_the_original_alone() -> None:
    img = np.full((200, 400, 3), 128, np.uint8)
    out = draw(
        img,
        [
            Label((20, 60, 80, 140), "ann 0.31", Kind.MATCHED),
            Label((150, 60, 210, 140), "unknown", Kind.UNKNOWN),
            Label((280, 60, 340, 140), "? bob/cy", Kind.REVIEW),
        ],
    )
    assert (img == 128).all()
    assert tuple(out[100, 20]) == MATCHED  # left edge of the first box
    assert tuple(out[100, 150]) == UNKNOWN
    assert tuple(out[100, 280]) == REVIEW  # needs review: amber, unlike both others
    assert len({MATCHED, UNKNOWN, REVIEW}) == 3
    assert (out[100, 100] == 128).all()  # between the boxes: untouched
    assert (out[30:60, 20:80] != 128).any()  # a caption above the first box


@pytest.mark.parametrize("name", ["../escape.jpg", "/etc/passwd", "a/../../b.png"])
def test_output_path_stays_inside_the_output_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        output_path(tmp_path, name)


def test_write_keeps_the_relative_path_as_jpeg(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "period2/IMG_1.png",
        np.zeros((50, 60, 3), np.uint8),
        [Label((5, 5, 40, 40), "bob", Kind.MATCHED)],
    )
    assert path == tmp_path / "annotated" / "period2" / "IMG_1.jpg"
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (50, 60, 3)
    assert not list(tmp_path.rglob("*.part"))
