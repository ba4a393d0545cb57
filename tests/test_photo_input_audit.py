"""Photo input as a person sees it, and nothing lost: AVIF/HEIC container rotation and mirroring,
stale Exif tags beside it, colour and bit-depth conversions, multi-frame files, truncation, and
directory entries that are not readable photos or whose names are not UTF-8."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pillow_heif
import pytest
from PIL import Image

from rollcall_job.imageheader import heif_transforms
from rollcall_job.photos import PhotoError, decode, iter_read, list_photos
from rollcall_job.termination import summary_message

BGR = npt.NDArray[np.uint8]

pillow_heif.register_heif_opener()

# Exif orientation -> (shape, quadrant of the red top-left block) once shown upright.
UPRIGHT = {
    1: ((40, 60), (0, 0)),
    2: ((40, 60), (0, 1)),  # mirrored left-right
    3: ((40, 60), (1, 1)),  # rotated 180
    4: ((40, 60), (1, 0)),  # mirrored top-bottom
    5: ((60, 40), (0, 0)),  # transposed
    6: ((60, 40), (0, 1)),  # 90 clockwise
    7: ((60, 40), (1, 1)),  # transverse
    8: ((60, 40), (1, 0)),  # 90 anticlockwise
}


def _marked() -> Image.Image:
    """A 60x40 landscape picture with a red block in its top-left corner."""
    rgb = np.full((40, 60, 3), 255, np.uint8)
    rgb[:10, :15] = (255, 0, 0)
    return Image.fromarray(rgb)


def _red_quadrant(img: BGR) -> tuple[int, int]:
    red = (img[:, :, 2] > 200) & (img[:, :, 0] < 80)
    ys, xs = np.nonzero(red)
    return int(ys.mean() > img.shape[0] / 2), int(xs.mean() > img.shape[1] / 2)


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _oriented(fmt: str, orientation: int, extra_tag: int | None = None) -> bytes:
    """``_marked()`` saved by Pillow/pillow-heif with this Exif orientation: for HEIC and AVIF the
    writer turns it into the container's ``irot``/``imir`` properties."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    if extra_tag is not None:
        exif[0x0128] = extra_tag  # ResolutionUnit, a SHORT a test can later relabel
    return _save(_marked(), fmt, exif=exif.tobytes(), quality=95)


# --- orientation --------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(2, 9))
def test_an_avif_with_container_rotation_or_mirroring_is_decoded_upright(orientation: int) -> None:
    """OpenCV's AVIF decoder ignores ``irot``/``imir``: a portrait AVIF came out sideways."""
    data = _oriented("AVIF", orientation)
    assert b"irot" in data or b"imir" in data
    img = decode(data)
    shape, quadrant = UPRIGHT[orientation]
    assert img.shape == (*shape, 3)
    assert _red_quadrant(img) == quadrant


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_a_heic_with_container_rotation_or_mirroring_is_decoded_upright(orientation: int) -> None:
    data = _oriented("HEIF", orientation)
    assert data[4:12] == b"ftypheic"
    img = decode(data)
    shape, quadrant = UPRIGHT[orientation]
    assert img.shape == (*shape, 3)
    assert _red_quadrant(img) == quadrant


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_an_exif_orientation_beside_irot_is_not_applied_a_second_time(fmt: str) -> None:
    """Phones write both ``irot`` and the Exif tag; HEIF says ``irot`` wins, so rotate only once."""
    data = _oriented(fmt, 6, extra_tag=6)
    as_orientation = b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"  # big-endian Exif entry
    relabelled = data.replace(b"\x01\x28" + as_orientation[2:], as_orientation)
    assert as_orientation in relabelled and b"irot" in relabelled
    img = decode(relabelled)
    assert img.shape == (60, 40, 3)
    assert _red_quadrant(img) == (0, 1)


def test_heif_transforms_are_read_for_the_primary_item_in_order() -> None:
    assert heif_transforms(_oriented("AVIF", 1)) == []
    assert heif_transforms(_oriented("AVIF", 6)) == [("irot", 3)]
    assert heif_transforms(_oriented("AVIF", 2)) == [("imir", 1)]
    assert heif_transforms(_oriented("AVIF", 7)) == [("irot", 3), ("imir", 0)]
    assert heif_transforms(b"\0\0\0\x18ftypavif" + b"\0" * 12) == []  # no meta box
    assert heif_transforms(_oriented("AVIF", 6)[:200]) == []  # cut inside meta


# --- colours, bit depths, frames, truncation ----------------------------------------------------


def test_cmyk_16_bit_palette_and_grey_alpha_files_decode_to_true_8_bit_bgr() -> None:
    red = Image.new("RGB", (6, 5), (255, 0, 0))
    palette = Image.new("P", (6, 5), 1)
    palette.putpalette([0, 0, 0, 250, 120, 10])
    deep = np.zeros((5, 6, 3), np.uint16)
    deep[:] = (0x1234, 0x8000, 0xFF00)  # BGR, 16 bits a sample
    cases: list[tuple[bytes, tuple[int, int, int], int]] = [
        (_save(red.convert("CMYK"), "JPEG", quality=100), (0, 0, 255), 3),
        (cv2.imencode(".png", deep)[1].tobytes(), (0x12, 0x80, 0xFF), 0),
        (_save(palette, "PNG"), (10, 120, 250), 0),
        (_save(Image.new("LA", (6, 5), (77, 0)), "PNG"), (77, 77, 77), 0),
        (_save(Image.new("I;16", (6, 5), 0xA0FF), "PNG"), (0xA0, 0xA0, 0xA0), 0),
    ]
    for data, bgr, tolerance in cases:
        img = decode(data)
        assert img.shape == (5, 6, 3) and img.dtype == np.uint8
        diff = np.abs(img.astype(np.int16) - np.array(bgr, np.int16))
        assert int(diff.max()) <= tolerance, (bgr, img[0, 0])


def test_an_animated_gif_or_multi_page_tiff_yields_its_first_frame() -> None:
    first = Image.new("RGB", (10, 8), (255, 0, 0))
    later = [Image.new("RGB", (10, 8), (0, 255, 0)), Image.new("RGB", (300, 200), (0, 0, 255))]
    for fmt in ("GIF", "TIFF"):
        img = decode(_save(first, fmt, save_all=True, append_images=later))
        assert img.shape == (8, 10, 3)
        assert img[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("ext", [".jpg", ".jpg-progressive", ".png"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_photo_is_an_error_never_a_partly_grey_picture(ext: str, keep: float) -> None:
    """A half-grey picture hides every face in its lower part: those students would be absent."""
    y, x = np.mgrid[0:120, 0:160]
    img = np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if ext.endswith("progressive") else []
    data = cv2.imencode(ext.split("-")[0], img, params)[1].tobytes()
    with pytest.raises(PhotoError) as e:
        decode(data[: int(len(data) * keep)])
    assert e.value.reason == "corrupt"


# --- directory entries --------------------------------------------------------------------------


def test_entries_named_like_photos_that_are_no_file_are_error_records(tmp_path: Path) -> None:
    """A dangling link or a FIFO named ``.jpg`` was dropped from the listing without a trace."""
    good = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    (tmp_path / "a_dangling.jpg").symlink_to(tmp_path / "deleted.jpg")
    os.mkfifo(tmp_path / "b_fifo.jpg")
    (tmp_path / "c_folder.jpg").mkdir()  # a folder is walked, not read
    (tmp_path / "c_folder.jpg" / "inner.png").write_bytes(good)
    (tmp_path / "d_link.jpg").symlink_to(tmp_path / "c_folder.jpg" / "inner.png")
    got = list(iter_read(list_photos(tmp_path), max_bytes=1 << 20))
    records = [
        (ph.name, r.reason, r.detail) if isinstance(r, PhotoError) else (ph.name, r.shape)
        for ph, r in got
    ]
    assert records == [
        ("a_dangling.jpg", "unreadable", "No such file or directory"),
        ("b_fifo.jpg", "unreadable", "not a regular file"),
        ("c_folder.jpg/inner.png", (4, 4, 3)),
        ("d_link.jpg", (4, 4, 3)),
    ]


def test_names_that_are_not_utf8_become_distinct_encodable_ids(tmp_path: Path) -> None:
    """A surrogate-escaped id made the termination summary raise UnicodeEncodeError."""
    good = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    root = os.fsencode(tmp_path)
    for raw in (b"caf\xe9.jpg", b"caf\xe8.jpg", "Ünï cödé photo.JPG".encode()):
        with open(root + b"/" + raw, "wb") as f:
            f.write(good)
    (tmp_path / "empty.HEIC").write_bytes(b"")
    got = list(iter_read(list_photos(tmp_path), max_bytes=1 << 20))
    names = [ph.name for ph, _ in got]
    assert names == ["caf\\xe8.jpg", "caf\\xe9.jpg", "empty.HEIC", "Ünï cödé photo.JPG"]
    assert [isinstance(r, np.ndarray) for _, r in got] == [True, True, False, True]
    failed = [{"photo": n, "reason": "corrupt"} for n in names]
    assert "caf\\\\xe9.jpg" in summary_message({"failed": failed}, result_key="k")
