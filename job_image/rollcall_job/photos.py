"""Find and read the job's photos; a bad photo becomes a per-photo error, never a failed job.

Reading goes through ``cv2.imdecode(..., IMREAD_COLOR)``, which applies the EXIF orientation tag
(phones store portrait shots as rotated landscape pixels), always yields 8-bit BGR, and drops alpha.
Size is capped twice before decoding: by bytes on disk, and by the pixel count read from the
JPEG/PNG header, so a small file that would inflate into gigabytes is refused without allocating.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 64_000_000


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
    """Image files under ``root`` (recursively, hidden entries skipped), in a stable order."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in EXTENSIONS and p.is_file():
            found.append(Photo(rel.as_posix(), p))
    return sorted(found, key=lambda ph: ph.name)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding, or None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Bytes to an EXIF-upright 8-bit BGR image, or PhotoError."""
    if not data:
        raise PhotoError("empty")
    size = header_size(data)
    if size is not None:
        w, h = size
        if w == 0 or h == 0:
            raise PhotoError("corrupt", "zero-sized image")
        if w * h > max_pixels:
            raise PhotoError("too_large", f"{w}x{h} pixels > {max_pixels}")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise PhotoError("corrupt", str(e).strip().splitlines()[-1][:200]) from e
    if img is None or img.size == 0:
        raise PhotoError("corrupt", "not a decodable image")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise PhotoError("too_large", f"{img.shape[1]}x{img.shape[0]} pixels > {max_pixels}")
    return np.ascontiguousarray(img, dtype=np.uint8)


def read(
    photo: Photo, *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.uint8]:
    """Read one photo under the byte and pixel caps, or raise PhotoError."""
    try:
        size = photo.path.stat().st_size
        if size > max_bytes:
            raise PhotoError("too_large", f"{size} bytes > {max_bytes}")
        with photo.path.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as e:
        raise PhotoError("unreadable", e.strerror or type(e).__name__) from e
    if len(data) > max_bytes:
        raise PhotoError("too_large", f"more than {max_bytes} bytes")
    return decode(data, max_pixels=max_pixels)


def iter_read(
    photos: list[Photo], *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[Photo, npt.NDArray[np.uint8] | PhotoError]]:
    """Each photo with its image or its error, in order."""
    for ph in photos:
        try:
            yield ph, read(ph, max_bytes=max_bytes, max_pixels=max_pixels)
        except PhotoError as e:
            yield ph, e
