"""Photo reading: EXIF orientation honoured, size caps enforced, bad files become error records."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from rollcall_job.photos import Photo, PhotoError, decode, header_size, iter_read, list_photos


def _marked_image(h: int = 40, w: int = 60) -> np.ndarray:
    """A landscape image with a red block in its top-left corner (so a rotation is visible)."""
    img = np.full((h, w, 3), 255, np.uint8)
    img[:10, :15] = (0, 0, 255)
    return img


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the Orientation tag (0x0112) after SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd += struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def _red_corner(img: np.ndarray) -> tuple[int, int]:
    """(row, col) centroid of the red pixels, as fractions rounded to a quadrant (0 or 1)."""
    red = (img[:, :, 2] > 200) & (img[:, :, 0] < 80)
    ys, xs = np.nonzero(red)
    return int(ys.mean() > img.shape[0] / 2), int(xs.mean() > img.shape[1] / 2)


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (40, 60), (0, 0)),  # as stored
        (3, (40, 60), (1, 1)),  # rotated 180
        (6, (60, 40), (0, 1)),  # needs 90 degrees clockwise: top-left goes to top-right
        (8, (60, 40), (1, 0)),  # needs 90 degrees counter-clockwise: top-left goes to bottom-left
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, shape: tuple[int, int], corner: tuple[int, int]
) -> None:
    data = _with_exif_orientation(_jpeg(_marked_image()), orientation)
    img = decode(data)
    assert img.shape[:2] == shape
    assert _red_corner(img) == corner


def test_header_size_reads_jpeg_and_png_without_decoding() -> None:
    img = np.zeros((33, 71, 3), np.uint8)
    assert header_size(_jpeg(img)) == (71, 33)
    _, png = cv2.imencode(".png", img)
    assert header_size(png.tobytes()) == (71, 33)
    assert header_size(_with_exif_orientation(_jpeg(img), 6)) == (71, 33)
    assert header_size(b"GIF89a....") is None


def _png_bomb(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (the data is a few bytes of zlib)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_pixel_cap_refuses_a_decompression_bomb_before_decoding() -> None:
    with pytest.raises(PhotoError) as e:
        decode(_png_bomb(50_000, 50_000), max_pixels=10_000_000)
    assert e.value.reason == "too_large"


def test_pixel_cap_applies_to_real_images() -> None:
    data = _jpeg(np.zeros((100, 100, 3), np.uint8))
    assert decode(data, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(PhotoError, match="too_large"):
        decode(data, max_pixels=9_999)


def test_grey_and_alpha_pngs_come_back_as_bgr() -> None:
    for img in (np.zeros((5, 6), np.uint8), np.zeros((5, 6, 4), np.uint8)):
        _, png = cv2.imencode(".png", img)
        assert decode(png.tobytes()).shape == (5, 6, 3)


def test_bad_files_become_error_records_and_the_rest_are_read(tmp_path: Path) -> None:
    good = _jpeg(_marked_image())
    (tmp_path / "b_good.jpg").write_bytes(good)
    (tmp_path / "a_empty.jpg").write_bytes(b"")
    (tmp_path / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    (tmp_path / "d_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "e_big.jpg").write_bytes(good + b"\0" * 5000)
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / ".hidden.jpg").write_bytes(good)
    sub = tmp_path / "period2"
    sub.mkdir()
    (sub / "f.JPG").write_bytes(good)

    photos = list_photos(tmp_path)
    assert [p.name for p in photos] == [
        "a_empty.jpg",
        "b_good.jpg",
        "c_corrupt.jpg",
        "d_truncated.png",
        "e_big.jpg",
        "period2/f.JPG",
    ]
    photos.append(Photo("gone.jpg", tmp_path / "gone.jpg"))
    got = {ph.name: r for ph, r in iter_read(photos, max_bytes=len(good) + 100)}
    reasons = {n: r.reason for n, r in got.items() if isinstance(r, PhotoError)}
    assert reasons == {
        "a_empty.jpg": "empty",
        "c_corrupt.jpg": "corrupt",
        "d_truncated.png": "corrupt",
        "e_big.jpg": "too_large",
        "gone.jpg": "unreadable",
    }
    assert isinstance(got["b_good.jpg"], np.ndarray)
    assert isinstance(got["period2/f.JPG"], np.ndarray)
