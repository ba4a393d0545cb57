"""Photo reading: the real format and size are checked before decoding, whatever the file is named;
EXIF orientation is honoured; HEIC is decoded; bad files become error records, in order, while the
next photo is decoded ahead of the consumer."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pillow_heif
import pytest

from rollcall_job import DEFAULT_MAX_IMAGE_PIXELS
from rollcall_job.imageheader import Format, declared_size, sniff
from rollcall_job.models.assets import photo
from rollcall_job.photos import (
    EXTENSIONS,
    Photo,
    PhotoError,
    check,
    decode,
    iter_read,
    list_photos,
)
from rollcall_job.prefetch import prefetch_map

REPO = Path(__file__).resolve().parent.parent
Image = npt.NDArray[np.uint8]


# --- building real files of every format ------------------------------------------------------


def _marked_image(h: int = 40, w: int = 60) -> Image:
    """A landscape image with a red block in its top-left corner (so a rotation is visible)."""
    img = np.full((h, w, 3), 255, np.uint8)
    img[:10, :15] = (0, 0, 255)
    return img


def _encode(ext: str, img: Image, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def _jpeg(img: Image) -> bytes:
    return _encode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def _heic(img: Image, *, alpha: bool = False, fast: bool = False) -> bytes:
    """A real HEIC (HEVC via libheif's x265) of a BGR image; ``fast``: x265's ultrafast preset,
    ~4x less CPU, for tests where only the container matters, not the picture's fidelity."""
    rgb = np.ascontiguousarray(img[:, :, ::-1])
    if alpha:
        rgb = np.dstack([rgb, np.full(img.shape[:2], 255, np.uint8)])
    h, w = img.shape[:2]
    heif = pillow_heif.from_bytes("RGBA" if alpha else "RGB", (w, h), rgb.tobytes())
    out = io.BytesIO()
    heif.save(out, quality=95, enc_params={"preset": "ultrafast"} if fast else {})
    return out.getvalue()


def _encoders() -> dict[str, Callable[[Image], bytes]]:
    return {
        "jpeg": _jpeg,
        "png": lambda im: _encode(".png", im),
        "webp-lossy": lambda im: _encode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, 90]),
        "webp-lossless": lambda im: _encode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, 101]),
        "bmp": lambda im: _encode(".bmp", im),
        "tiff": lambda im: _encode(".tiff", im),
        "gif": lambda im: _encode(".gif", im),
        "avif": lambda im: _encode(".avif", im),
        "heic": _heic,
    }


FORMAT_OF = {
    "jpeg": Format.JPEG,
    "png": Format.PNG,
    "webp-lossy": Format.WEBP,
    "webp-lossless": Format.WEBP,
    "bmp": Format.BMP,
    "tiff": Format.TIFF,
    "gif": Format.GIF,
    "avif": Format.AVIF,
    "heic": Format.HEIF,
}
KINDS = sorted(FORMAT_OF)


def _tiff_bomb(w: int, h: int, rows: int = 256) -> bytes:
    """A deflate-compressed 8-bit grey TIFF declaring w x h pixels in a few KB.

    Every strip points at the same compressed block of zeros, so the file stays tiny however large
    it claims to be; decoded, 30000x30000 is 2.5 GiB of BGR (5.4 GiB peak through OpenCV).
    """
    strip = zlib.compress(b"\0" * (w * rows), 9)
    n = -(-h // rows)
    offsets_at = 8 + len(strip)
    counts_at = offsets_at + 4 * n
    ifd_at = counts_at + 4 * n
    tags = [
        (256, 4, 1, w),  # ImageWidth
        (257, 4, 1, h),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, n, offsets_at),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, rows),  # RowsPerStrip
        (279, 4, n, counts_at),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return (
        b"II*\0"
        + struct.pack("<I", ifd_at)
        + strip
        + struct.pack(f"<{n}I", *([8] * n))
        + struct.pack(f"<{n}I", *([len(strip)] * n))
        + ifd
    )


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


def _bigtiff(w: int, h: int) -> bytes:
    """A BigTIFF header whose first IFD declares w x h (LONG8 width, SHORT height)."""
    entries = struct.pack("<HHQQ", 256, 16, 1, w) + struct.pack("<HHQHHI", 257, 3, 1, h, 0, 0)
    return b"II+\0" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + entries


def _gif_overhanging_frame(canvas: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A GIF header (no colour table) with one extension block and one frame placed at (x, y)."""
    x, y, w, h = frame
    ext = b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", *canvas, 0, 0, 0)
        + ext
        + b"\x2c"
        + struct.pack("<HHHHB", x, y, w, h, 0)
    )


def _patch_heif_ispe(data: bytes, w: int, h: int) -> bytes:
    """Rewrite every ``ispe`` property of a HEIF to declare w x h."""
    out = bytearray(data)
    at = out.find(b"ispe")
    assert at > 0
    while at > 0:
        out[at + 8 : at + 16] = struct.pack(">II", w, h)
        at = out.find(b"ispe", at + 4)
    return bytes(out)


# --- format sniffing and declared sizes ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_is_sniffed_from_its_bytes_with_its_declared_size(kind: str) -> None:
    data = _encoders()[kind](np.zeros((33, 71, 3), np.uint8))
    fmt = sniff(data).format
    assert fmt is FORMAT_OF[kind]
    size = declared_size(fmt, data)
    assert size is not None
    if fmt in (Format.HEIF, Format.AVIF):  # coded size, padded to the codec's block before a crop
        assert 71 <= size[0] < 71 + 64 and 33 <= size[1] < 33 + 64
    else:
        assert size == (71, 33)


@pytest.mark.parametrize(
    ("data", "unsupported"),
    [
        (b"hello, this is a text file named photo.jpg", "unknown"),
        (b"\0" * 64, "unknown"),
        (b"%PDF-1.7\n...", "pdf"),
        (b"\0\0\0\x0cJXL \r\n\x87\n\0\0", "jpeg-xl"),
        (b"\0\0\0\x0cjP  \r\n\x87\n\0\0", "jpeg-2000"),
        (b"\0\0\0\x18ftypisom\0\0\0\0isommp41", "isobmff-isom"),  # a video
        (b"P6\n4 4\n255\n" + b"\0" * 48, "unknown"),  # PPM: OpenCV decodes it, we do not
    ],
)
def test_files_of_no_supported_format_are_named_and_refused(data: bytes, unsupported: str) -> None:
    assert sniff(data).format is None
    assert sniff(data).unsupported == unsupported
    with pytest.raises(PhotoError) as e:
        decode(data)
    assert e.value.reason == "unsupported_format"


def test_odd_headers_declare_their_true_size() -> None:
    bmp_top_down = bytearray(_encode(".bmp", np.zeros((33, 71, 3), np.uint8)))
    bmp_top_down[22:26] = struct.pack("<i", -33)
    cases: list[tuple[Format, bytes, tuple[int, int]]] = [
        (Format.TIFF, _bigtiff(70_000, 50), (70_000, 50)),
        (Format.TIFF, _tiff_bomb(30_000, 30_000), (30_000, 30_000)),
        (Format.BMP, bytes(bmp_top_down), (71, 33)),
        (Format.GIF, _gif_overhanging_frame((10, 10), (5, 5, 20_000, 30)), (20_005, 35)),
        (Format.PNG, _png_bomb(50_000, 50_000), (50_000, 50_000)),
        (Format.JPEG, _with_exif_orientation(_jpeg(np.zeros((33, 71, 3), np.uint8)), 6), (71, 33)),
    ]
    for fmt, data, size in cases:
        assert sniff(data).format is fmt
        assert declared_size(fmt, data) == size


# --- the pixel cap, before decoding, for every format ---------------------------------------------


def _bombs() -> dict[str, bytes]:
    """One file per format whose header declares 30000x30000 (or the format's maximum)."""
    small = np.zeros((16, 16, 3), np.uint8)
    jpeg = bytearray(_jpeg(small))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 30_000, 30_000)
    webp = bytearray(_encode(".webp", small, [cv2.IMWRITE_WEBP_QUALITY, 101]))
    bits = (16_383 - 1) | ((16_383 - 1) << 14)  # VP8L: 14-bit sizes, so at most 16383 a side
    webp[21:25] = struct.pack("<I", bits | (webp[24] & 0xF0) << 24)
    bmp = bytearray(_encode(".bmp", small))
    bmp[18:26] = struct.pack("<ii", 30_000, 30_000)
    gif = bytearray(_encode(".gif", small))
    gif[6:10] = struct.pack("<HH", 30_000, 30_000)
    return {
        "jpeg": bytes(jpeg),
        "png": _png_bomb(30_000, 30_000),
        "webp": bytes(webp),
        "bmp": bytes(bmp),
        "tiff": _tiff_bomb(30_000, 30_000),
        "bigtiff": _bigtiff(30_000, 30_000),
        "gif": bytes(gif),
        "heic": _patch_heif_ispe(_heic(small), 30_000, 30_000),
        "avif": _patch_heif_ispe(_encode(".avif", small), 30_000, 30_000),
    }


@pytest.mark.parametrize("kind", sorted(_bombs()))
def test_a_declared_size_over_the_cap_is_refused_before_decoding(kind: str) -> None:
    data = _bombs()[kind]
    assert len(data) < 200_000  # a small file ...
    with pytest.raises(PhotoError) as e:
        check(data, max_pixels=100_000_000)  # ... that declares over 100 M pixels
    assert e.value.reason == "too_large"
    assert "pixels" in e.value.detail


@pytest.mark.parametrize("kind", KINDS)
def test_the_cap_is_inclusive_for_real_images_of_every_format(kind: str) -> None:
    data = _encoders()[kind](np.zeros((64, 64, 3), np.uint8))
    assert decode(data, max_pixels=64 * 64 + 64 * 64).shape == (64, 64, 3)  # HEIF may pad
    with pytest.raises(PhotoError, match="too_large"):
        decode(data, max_pixels=64 * 64 - 1)


def _peak_rss_of_reading(
    tmp_path: Path, data: bytes, code: str, env: dict[str, str]
) -> dict[str, object]:
    """Run ``code`` (which reads ``path`` and sets ``result``) in a fresh interpreter.

    Returns its result and how far its peak RSS (``VmHWM``) rose above the RSS it had just before
    reading. The peak is per address space, so each measurement needs its own process (and not
    ``ru_maxrss``, which Linux carries over from the forking parent across ``execve``).
    """
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    script = f"""
import json, os
path = {str(path)!r}
def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
{code.split("#READ")[0]}
before = status_kib("VmRSS")
{code.split("#READ")[1]}
peak = status_kib("VmHWM")
print(json.dumps({{"result": result, "growth_mib": (peak - before) / 1024}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
    )
    doc: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


PYTHONPATH = {"PYTHONPATH": str(REPO / "job_image")}
READ_WITH_PHOTOS = """
from pathlib import Path
from rollcall_job.photos import Photo, read, PhotoError
cap = int(os.environ.get("ROLLCALL_MAX_IMAGE_PIXELS", "64000000"))
#READ
try:
    result = list(read(Photo("p", Path(path)), max_bytes=40 << 20, max_pixels=cap).shape)
except PhotoError as e:
    result = e.reason
"""
# Our header check bypassed: only the limit rollcall_job/__init__.py gave OpenCV stands.
READ_WITH_CV2_ONLY = """
import rollcall_job
import cv2, numpy as np
data = np.fromfile(path, np.uint8)
#READ
try:
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    result = None if img is None else list(img.shape)
except cv2.error as e:
    result = "cv2.error"
"""


@pytest.mark.parametrize(
    ("code", "expected"),
    [(READ_WITH_PHOTOS, "too_large"), (READ_WITH_CV2_ONLY, "cv2.error")],
    ids=["header-check", "opencv-limit-alone"],
)
def test_a_hostile_tiff_named_jpg_cannot_take_the_pods_memory(
    tmp_path: Path, code: str, expected: str
) -> None:
    """30000x30000 in 8.5 KB: unchecked, OpenCV peaks at 5.4 GiB (pod limit 4 GiB)."""
    doc = _peak_rss_of_reading(tmp_path, _tiff_bomb(30_000, 30_000), code, PYTHONPATH)
    assert doc["result"] == expected
    growth = doc["growth_mib"]
    assert isinstance(growth, float) and growth < 32, doc


@pytest.mark.parametrize("kind", KINDS)
def test_a_photo_at_the_cap_takes_a_bounded_share_of_memory(tmp_path: Path, kind: str) -> None:
    """Decoding a photo of exactly ``max_pixels`` peaks at a small multiple of its BGR size.

    The cap is set small here (1 M pixels) to keep the test light; the multiple is what carries
    over to the job's default of 64 M pixels.
    """
    side = 1000
    img = np.repeat(np.repeat(np.arange(100, dtype=np.uint8)[:, None, None], 10, 0), side, 1)
    img = np.ascontiguousarray(np.broadcast_to(img, (side, side, 3)))
    env = {**PYTHONPATH, "ROLLCALL_MAX_IMAGE_PIXELS": str(side * side)}
    doc = _peak_rss_of_reading(tmp_path, _encoders()[kind](img), READ_WITH_PHOTOS, env)
    assert doc["result"] == [side, side, 3]
    growth = doc["growth_mib"]
    bgr_mib = side * side * 3 / 2**20
    assert isinstance(growth, float) and growth < 10 * bgr_mib, doc  # AVIF, the worst, ~6-7x


def test_a_heic_that_understates_its_size_is_refused_without_decoding(tmp_path: Path) -> None:
    """Its ``ispe`` says 64x64 but it codes 3000x3000: libheif refuses it before the big decode."""
    side = 3000
    img = np.repeat(np.repeat(np.arange(150, dtype=np.uint8)[:, None, None], 20, 0), side, 1)
    img = np.ascontiguousarray(np.broadcast_to(img, (side, side, 3)))
    data = _patch_heif_ispe(_heic(img, fast=True), 64, 64)
    env = {**PYTHONPATH, "ROLLCALL_MAX_IMAGE_PIXELS": str(64 * 64)}
    doc = _peak_rss_of_reading(tmp_path, data, READ_WITH_PHOTOS, env)
    assert doc["result"] == "corrupt"
    growth = doc["growth_mib"]
    assert isinstance(growth, float) and growth < side * side * 3 / 2**20, doc  # < one BGR copy


def test_the_package_cap_is_the_job_settings_default() -> None:
    """``rollcall_job/__init__`` keeps its own copy so importing it stays free of pydantic."""
    from rollcall_contract.jobenv import JobSettings

    assert JobSettings.model_fields["max_image_pixels"].default == DEFAULT_MAX_IMAGE_PIXELS


def test_opencv_gets_the_jobs_pixel_cap_when_the_package_is_imported() -> None:
    code = "import os, rollcall_job; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"
    for env, expected in [
        ({}, str(DEFAULT_MAX_IMAGE_PIXELS)),
        ({"ROLLCALL_MAX_IMAGE_PIXELS": "1234"}, "1234"),
        ({"ROLLCALL_MAX_IMAGE_PIXELS": "lots"}, str(DEFAULT_MAX_IMAGE_PIXELS)),
        ({"OPENCV_IO_MAX_IMAGE_PIXELS": "99", "ROLLCALL_MAX_IMAGE_PIXELS": "1234"}, "99"),
    ]:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/bin:/bin", **PYTHONPATH, **env},
        )
        assert out.stdout.strip() == expected


# --- decoding: orientation, colour, HEIC ------------------------------------------------------


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the Orientation tag (0x0112) after SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd += struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def _red_corner(img: Image) -> tuple[int, int]:
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


def test_grey_and_alpha_pngs_come_back_as_bgr() -> None:
    for img in (np.zeros((5, 6), np.uint8), np.zeros((5, 6, 4), np.uint8)):
        assert decode(_encode(".png", img)).shape == (5, 6, 3)


@pytest.mark.parametrize("alpha", [False, True])
def test_a_real_heic_photo_reads_back_as_the_same_bgr_picture(alpha: bool) -> None:
    bgr = np.asarray(cv2.imread(str(photo("astronaut.png")), cv2.IMREAD_COLOR), np.uint8)
    assert bgr.shape == (512, 512, 3)  # a real photo of a face
    data = _heic(bgr, alpha=alpha)
    assert data[4:12] == b"ftypheic"
    img = decode(data)
    assert img.shape == bgr.shape and img.dtype == np.uint8
    diff = np.abs(img.astype(np.int16) - bgr.astype(np.int16))
    assert float(diff.mean()) < 4.0  # lossy, but the same picture in the same channel order
    swapped = np.abs(img[:, :, ::-1].astype(np.int16) - bgr.astype(np.int16))
    assert float(swapped.mean()) > 4 * float(diff.mean())


def test_a_broken_heic_is_a_corrupt_photo() -> None:
    data = _heic(_marked_image())
    mdat = data.find(b"mdat")
    broken = data[: mdat + 8] + b"\0" * (len(data) - mdat - 8)  # the coded picture zeroed
    with pytest.raises(PhotoError) as e:
        decode(broken)
    assert e.value.reason == "corrupt"


# --- corrupt, truncated and misnamed files -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep", [3, 12, 20])
def test_a_file_cut_inside_its_header_is_corrupt_or_unrecognised(kind: str, keep: int) -> None:
    data = _encoders()[kind](_marked_image())[:keep]
    with pytest.raises(PhotoError) as e:
        decode(data)
    assert e.value.reason in ("corrupt", "unsupported_format")


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_cut_in_half_never_raises_anything_but_a_photo_error(kind: str) -> None:
    data = _encoders()[kind](np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    try:
        img = decode(data[: len(data) // 2])
    except PhotoError as e:
        assert e.reason == "corrupt"
    else:  # some decoders return what they have, with the rest grey: still a usable image
        assert img.shape == (64, 64, 3)


def test_the_extension_does_not_decide_the_format(tmp_path: Path) -> None:
    img = _marked_image()
    files = {
        "tiff_named.jpg": _encode(".tiff", img),
        "heic_named.png": _heic(img),
        "jpeg_named.heic": _jpeg(img),
        "png_named.webp": _encode(".png", img),
        "text_named.jpg": b"not a photo at all\n" * 10,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    got = dict(iter_read(list_photos(tmp_path), max_bytes=1 << 20))
    assert sorted(p.name for p in got) == sorted(files)
    for ph, result in got.items():
        if ph.name == "text_named.jpg":
            assert isinstance(result, PhotoError) and result.reason == "unsupported_format"
        else:
            assert isinstance(result, np.ndarray), (ph.name, result)
            assert result.shape == (40, 60, 3)
            assert _red_corner(result) == (0, 0)


def test_phone_and_unusual_extensions_are_listed_not_dropped(tmp_path: Path) -> None:
    names = ["a.heic", "b.HEIF", "c.hif", "d.avif", "e.jxl", "f.gif", "g.tif", "h.jfif"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a photo")
    assert [p.name for p in list_photos(tmp_path)] == names
    assert all(Path(n).suffix.lower() in EXTENSIONS for n in names)


def test_bad_files_become_error_records_in_order_and_the_rest_are_read(tmp_path: Path) -> None:
    good = _jpeg(_marked_image())
    (tmp_path / "b_good.jpg").write_bytes(good)
    (tmp_path / "a_empty.jpg").write_bytes(b"")
    (tmp_path / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    (tmp_path / "d_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "e_big.jpg").write_bytes(good + b"\0" * 5000)
    (tmp_path / "f_bomb.jpg").write_bytes(_tiff_bomb(30_000, 30_000))
    (tmp_path / "g_jxl.jxl").write_bytes(b"\xff\x0a" + b"\0" * 100)
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / ".hidden.jpg").write_bytes(good)
    sub = tmp_path / "period2"
    sub.mkdir()
    (sub / "f.JPG").write_bytes(good)

    photos = list_photos(tmp_path)
    photos.append(Photo("gone.jpg", tmp_path / "gone.jpg"))
    got = list(iter_read(photos, max_bytes=len(good) + 4000))
    assert [ph.name for ph, _ in got] == [ph.name for ph in photos]
    reasons = [(ph.name, r.reason if isinstance(r, PhotoError) else "ok") for ph, r in got]
    assert reasons == [
        ("a_empty.jpg", "empty"),
        ("b_good.jpg", "ok"),
        ("c_corrupt.jpg", "corrupt"),
        ("d_truncated.png", "corrupt"),
        ("e_big.jpg", "too_large"),
        ("f_bomb.jpg", "too_large"),
        ("g_jxl.jxl", "unsupported_format"),
        ("period2/f.JPG", "ok"),
        ("gone.jpg", "unreadable"),
    ]


# --- decoding one ahead -------------------------------------------------------------------------


class _Recorder:
    """A producer function that records which thread ran it and how far ahead it got."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.produced: list[int] = []
        self.threads: set[int] = set()
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.threads.add(threading.get_ident())
            self.produced.append(item)
        if item == self.fail_on:
            raise RuntimeError(f"boom at {item}")
        return item * 10


def _consume(it: Iterator[int], rec: _Recorder, ahead: int) -> list[tuple[int, int]]:
    """Take every item; on taking item k, note how many items the producer had started."""
    seen = []
    for value in it:
        with rec.lock:
            started = len(rec.produced)
        seen.append((value, started))
        assert started <= value // 10 + 1 + ahead, "the producer ran too far ahead"
    return seen


@pytest.mark.parametrize("ahead", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_prefetch_keeps_order_and_stays_at_most_ahead_items_early(ahead: int, n: int) -> None:
    rec = _Recorder()
    seen = _consume(prefetch_map(rec, range(n), ahead=ahead), rec, ahead)
    assert [v for v, _ in seen] == [i * 10 for i in range(n)]
    assert rec.produced == list(range(n))
    if n:
        assert threading.get_ident() not in rec.threads  # produced off the consumer's thread


def test_a_producer_error_arrives_after_every_earlier_item() -> None:
    rec = _Recorder(fail_on=3)
    taken: list[int] = []
    with pytest.raises(RuntimeError, match="boom at 3"):
        for value in prefetch_map(rec, range(7)):
            taken.append(value)
    assert taken == [0, 10, 20]
    assert rec.produced == [0, 1, 2, 3]  # nothing after the failure


def test_closing_early_stops_the_producer() -> None:
    rec = _Recorder()
    before = threading.active_count()
    it = prefetch_map(rec, range(100), ahead=1)
    assert next(it) == 0
    it.close()
    assert threading.active_count() == before  # the thread was joined
    assert len(rec.produced) <= 2


def test_prefetch_refuses_a_zero_lookahead() -> None:
    with pytest.raises(ValueError):
        next(prefetch_map(str, [1], ahead=0))


def test_iter_read_decodes_in_the_background_and_in_order(tmp_path: Path) -> None:
    names = [f"{i:02d}.png" for i in range(6)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(_encode(".png", np.full((4, 4, 3), i * 40, np.uint8)))
    (tmp_path / "02.png").write_bytes(b"")  # an error in the middle keeps its place
    got = list(iter_read(list_photos(tmp_path), max_bytes=1 << 20, ahead=2))
    assert [ph.name for ph, _ in got] == names
    for i, (_, r) in enumerate(got):
        if i == 2:
            assert isinstance(r, PhotoError) and r.reason == "empty"
        else:
            assert isinstance(r, np.ndarray) and int(r[0, 0, 0]) == i * 40
