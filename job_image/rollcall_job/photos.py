"""Find and read the job's photos; a bad photo becomes a per-photo error, never a failed job.

Every file passes the same gate before any decoder sees it, whatever its name says:

1. bytes on disk <= ``max_bytes``;
2. the real format, sniffed from its signature (``imageheader.sniff``), is one we decode (JPEG,
   PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF, AVIF); anything else is an ``unsupported_format`` error for
   that photo, never decoded blindly;
3. the size the format's header declares is <= ``max_pixels``, so a file of a few KB that would
   inflate into gigabytes is refused without allocating (``too_large``).

OpenCV's own limit (set in ``rollcall_job/__init__.py`` before cv2 loads) is a second line behind
step 3. Decoding goes through ``cv2.imdecode(..., IMREAD_COLOR)``, which applies the EXIF
orientation tag (phones store portrait shots as rotated landscape pixels), always yields 8-bit BGR
and drops alpha; HEIC/HEIF goes through libheif (``pillow-heif``), which applies the container's
rotation and mirroring the same way. OpenCV's AVIF decoder ignores that rotation and mirroring
(``irot``/``imir``), so AVIF is decoded with any Exif tag ignored (HEIF says the container wins)
and the container's transforms are applied here, as libheif does for HEIC. ``iter_read`` decodes
one photo ahead in a background thread so decoding overlaps inference on the previous photo.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job import DEFAULT_MAX_IMAGE_PIXELS
from rollcall_job.imageheader import Format, declared_size, heif_transforms, sniff
from rollcall_job.prefetch import prefetch_map

# Listed by name so that nothing a camera or phone writes is silently left out; what a file really
# is comes from its bytes, and formats we cannot decode (JPEG XL, JPEG 2000...) get an error record.
EXTENSIONS = frozenset(
    {
        *(".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff"),
        *(".gif", ".heic", ".heif", ".hif", ".avif", ".jxl", ".jp2"),
    }
)
DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS


class PhotoError(Exception):
    """This photo cannot be used; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Photo:
    name: str  # path relative to the input dir, with forward slashes: the id in results
    path: Path


def list_photos(root: Path) -> list[Photo]:
    """Entries under ``root`` named like images (recursively, hidden ones skipped), sorted.

    Anything so named but a directory is listed, a broken link or a FIFO included: ``read`` turns
    what is not a readable regular file into an ``unreadable`` record rather than losing it here.
    """
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in EXTENSIONS and not p.is_dir():
            found.append(Photo(_photo_id(rel), p))
    return sorted(found, key=lambda ph: ph.name)


def _photo_id(rel: Path) -> str:
    """``rel`` with forward slashes, valid UTF-8 whatever the file system holds.

    A name that is not UTF-8 (a zip made on another system) would otherwise carry surrogate escapes
    that no UTF-8 encoder accepts, failing the job when its summary is written; its bytes become
    ``\\xNN`` instead, so the id stays readable and distinct from its neighbours'.
    """
    return os.fsencode(rel.as_posix()).decode("utf-8", "backslashreplace")


def check(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Format:
    """The format of ``data`` if it may be decoded under ``max_pixels``, else PhotoError."""
    if not data:
        raise PhotoError("empty")
    sniffed = sniff(data)
    if sniffed.format is None:
        raise PhotoError("unsupported_format", sniffed.unsupported)
    size = declared_size(sniffed.format, data)
    if size is None:
        raise PhotoError("corrupt", f"no readable {sniffed.format} header")
    w, h = size
    if w == 0 or h == 0:
        raise PhotoError("corrupt", "zero-sized image")
    if w * h > max_pixels:
        raise PhotoError("too_large", f"{w}x{h} pixels > {max_pixels}")
    return sniffed.format


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Bytes to an upright 8-bit BGR image, or PhotoError."""
    fmt = check(data, max_pixels=max_pixels)
    if fmt is Format.HEIF:
        img = _decode_heif(data)
    elif fmt is Format.AVIF:
        img = _orient(_decode_cv2(data, cv2.IMREAD_IGNORE_ORIENTATION), heif_transforms(data))
    else:
        img = _decode_cv2(data)
    if img.size == 0:
        raise PhotoError("corrupt", "not a decodable image")
    if img.shape[0] * img.shape[1] > max_pixels:  # the header lied
        raise PhotoError("too_large", f"{img.shape[1]}x{img.shape[0]} pixels > {max_pixels}")
    return np.ascontiguousarray(img, dtype=np.uint8)


def _decode_cv2(data: bytes, flags: int = 0) -> npt.NDArray[np.uint8]:
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | flags)
    except cv2.error as e:  # includes OpenCV's own pixel limit
        raise PhotoError("corrupt", str(e).strip().splitlines()[-1][:200]) from e
    if img is None:
        raise PhotoError("corrupt", "not a decodable image")
    return np.asarray(img, dtype=np.uint8)


def _orient(img: npt.NDArray[np.uint8], transforms: list[tuple[str, int]]) -> npt.NDArray[np.uint8]:
    """Apply HEIF ``irot``/``imir`` transforms (as ``heif_transforms`` lists them), in order."""
    for kind, value in transforms:
        if kind == "irot":
            img = np.rot90(img, value)  # anticlockwise, as irot counts
        elif value == 0:  # imir axis 0: top and bottom exchanged
            img = img[::-1]
        else:
            img = img[:, ::-1]
    return img


def _decode_heif(data: bytes) -> npt.NDArray[np.uint8]:
    """HEIC/HEIF through libheif, imported here only: the job runs without it (HEIC then errors)."""
    try:
        import pillow_heif
    except ImportError as e:
        raise PhotoError("unsupported_format", "heif (pillow-heif is not installed)") from e
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True, bgr_mode=True)
        arr = np.asarray(heif)  # decodes the primary image, rotated/mirrored as the file says
    except (ValueError, RuntimeError, OSError, SyntaxError) as e:
        raise PhotoError("corrupt", str(e).strip().splitlines()[-1][:200] if str(e) else "") from e
    if arr.dtype != np.uint8:
        raise PhotoError("unsupported_format", f"heif with {arr.dtype} samples")
    if arr.ndim == 2:
        return np.asarray(cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if arr.shape[2] == 4:
        return np.asarray(cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    return arr


def read(
    photo: Photo, *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.uint8]:
    """Read one photo under the byte and pixel caps, or raise PhotoError."""
    try:
        # O_NONBLOCK: opening a FIFO named like a photo must not wait for a writer
        fd = os.open(photo.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PhotoError("unreadable", "not a regular file")
            if st.st_size > max_bytes:
                raise PhotoError("too_large", f"{st.st_size} bytes > {max_bytes}")
            data = f.read(max_bytes + 1)  # the file may have grown since fstat()
    except OSError as e:
        raise PhotoError("unreadable", e.strerror or type(e).__name__) from e
    if len(data) > max_bytes:
        raise PhotoError("too_large", f"more than {max_bytes} bytes")
    return decode(data, max_pixels=max_pixels)


def read_or_error(
    photo: Photo, *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Photo, npt.NDArray[np.uint8] | PhotoError]:
    """The photo with its image, or with the PhotoError that says why it has none."""
    try:
        return photo, read(photo, max_bytes=max_bytes, max_pixels=max_pixels)
    except PhotoError as e:
        return photo, e


def iter_read(
    photos: list[Photo],
    *,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    ahead: int = 1,
) -> Iterator[tuple[Photo, npt.NDArray[np.uint8] | PhotoError]]:
    """Each photo with its image or its error, in order, decoded ``ahead`` photos early.

    At most ``ahead`` decoded photos wait beyond the one the caller holds, so memory stays bounded.
    """
    return prefetch_map(
        lambda ph: read_or_error(ph, max_bytes=max_bytes, max_pixels=max_pixels),
        photos,
        ahead=ahead,
    )
