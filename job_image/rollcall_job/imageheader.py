"""What an image file really is and how big it says it is, from its first bytes alone.

The format comes from the file's signature (magic bytes), never from its name: a TIFF named
``.jpg`` is a TIFF. The declared size comes from the format's own header, so a decompression bomb
(a few KB that claim 30000x30000 pixels) is refused before any decoder allocates its buffer.
Pure functions over ``bytes``; every read is bounds-checked, so a truncated or hostile header
yields ``None`` (no size found) rather than an exception or a wrong size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum


class Format(StrEnum):
    """Formats the job decodes."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    BMP = "bmp"
    TIFF = "tiff"
    GIF = "gif"
    HEIF = "heif"  # HEIC/HEIF (HEVC-coded stills from phones)
    AVIF = "avif"  # AV1 in the same HEIF container


# Recognised but not decoded here: named in the per-photo error instead of "unknown".
_UNSUPPORTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\x0a", "jpeg-xl"),
    (4, b"JXL \r\n\x87\n", "jpeg-xl"),
    (4, b"jP  \r\n\x87\n", "jpeg-2000"),
    (0, b"\xff\x4f\xff\x51", "jpeg-2000"),
    (0, b"%PDF", "pdf"),
)
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


@dataclass(frozen=True)
class Sniffed:
    """The result of looking at a file's signature: a decodable format, or the name of one we refuse."""

    format: Format | None
    unsupported: str = ""  # set when ``format`` is None: a known name, or "unknown"


def sniff(data: bytes) -> Sniffed:
    """The format named by the file's signature."""
    if data[:3] == b"\xff\xd8\xff":
        return Sniffed(Format.JPEG)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return Sniffed(Format.PNG)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Sniffed(Format.WEBP)
    if data[:2] == b"BM":
        return Sniffed(Format.BMP)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return Sniffed(Format.TIFF)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed(Format.GIF)
    if data[4:8] == b"ftyp":
        return _sniff_isobmff(data)
    for offset, magic, name in _UNSUPPORTED_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return Sniffed(None, name)
    return Sniffed(None, "unknown")


def _sniff_isobmff(data: bytes) -> Sniffed:
    """HEIF or AVIF (or a video) from the ``ftyp`` box's major and compatible brands."""
    (box_size,) = struct.unpack(">I", data[:4])
    end = min(max(box_size, 16), len(data), 4096)
    major = data[8:12]
    brands = {major} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if major in _HEVC_BRANDS:
        return Sniffed(Format.HEIF)
    if brands & _AVIF_BRANDS:
        return Sniffed(Format.AVIF)
    if brands & (_HEVC_BRANDS | _HEIF_BRANDS):
        return Sniffed(Format.HEIF)
    return Sniffed(None, "isobmff-" + major.decode("ascii", "replace").strip())


def declared_size(fmt: Format, data: bytes) -> tuple[int, int] | None:
    """(width, height) the header declares, or None if the header is missing or truncated."""
    try:
        return _READERS[fmt](data)
    except (struct.error, IndexError, ValueError):
        return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
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
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        if length < 2:
            return None
        i += 2 + length
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, 24-bit minus-one fields
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return (w, h) if len(data) >= 30 else None
    if chunk == b"VP8 ":  # lossy: key frame start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then two 14-bit minus-one sizes
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:  # BITMAPCOREHEADER: unsigned 16-bit sizes
        w, h = struct.unpack("<HH", data[18:22])
        return int(w), int(h)
    if dib < 40:
        return None
    w, h = struct.unpack("<ii", data[18:26])  # a negative height means top-down rows
    return abs(w), abs(h)


def _tiff(data: bytes) -> tuple[int, int] | None:
    """ImageWidth/ImageLength of the first IFD (the page a decoder reads), classic or BigTIFF."""
    e = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        (offset,) = struct.unpack(e + "Q", data[8:16])
        (count,) = struct.unpack(e + "Q", data[offset : offset + 8])
        first, step = offset + 8, 20
    else:
        (offset,) = struct.unpack(e + "I", data[4:8])
        (count,) = struct.unpack(e + "H", data[offset : offset + 2])
        first, step = offset + 2, 12
    if first + count * step > len(data):
        return None
    found: dict[int, int] = {}
    for k in range(count):
        at = first + k * step
        tag, typ = struct.unpack(e + "HH", data[at : at + 4])
        if tag not in (256, 257):
            continue
        value = at + (12 if big else 8)
        if typ == 3:  # SHORT
            (found[tag],) = struct.unpack(e + "H", data[value : value + 2])
        elif typ == 4:  # LONG
            (found[tag],) = struct.unpack(e + "I", data[value : value + 4])
        elif typ == 16 and big:  # LONG8
            (found[tag],) = struct.unpack(e + "Q", data[value : value + 8])
        else:
            return None
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


def _gif(data: bytes) -> tuple[int, int] | None:
    """The larger of the logical screen and the first frame's extent (a frame may overhang)."""
    w, h, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while i < len(data):
        block = data[i]
        if block == 0x21:  # extension: label, then data sub-blocks up to a zero length
            i += 2
            while data[i] != 0:
                i += data[i] + 1
            i += 1
        elif block == 0x2C:  # image descriptor
            left, top, fw, fh = struct.unpack("<HHHH", data[i + 1 : i + 9])
            return max(w, left + fw), max(h, top + fh)
        else:
            return None
    return None


def _heif(data: bytes) -> tuple[int, int] | None:
    """The largest ``ispe`` (image spatial extent) property in ``meta/iprp/ipco``.

    The primary image's coded size is one of them (thumbnails and grid tiles are smaller; a clean
    aperture crop only shrinks it), so the largest bounds what a decoder allocates for it.
    """
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        return None
    iprp = _child(data, meta[0] + 4, meta[1], b"iprp")  # meta is a full box: skip version/flags
    ipco = _child(data, iprp[0], iprp[1], b"ipco") if iprp else None
    if ipco is None:
        return None
    best: tuple[int, int] | None = None
    for kind, start, end in _boxes(data, ipco[0], ipco[1]):
        if kind == b"ispe" and end - start >= 12:
            w, h = struct.unpack(">II", data[start + 4 : start + 12])
            if best is None or w * h > best[0] * best[1]:
                best = (int(w), int(h))
    return best


# Items with properties in one HEIF file; a phone's grid photo has tens (its tiles).
_MAX_IPMA_ENTRIES = 65_536


def heif_transforms(data: bytes) -> list[tuple[str, int]]:
    """The primary item's rotation and mirroring (HEIF/AVIF), in the order they apply.

    ``("irot", n)``: rotate n quarter turns anticlockwise; ``("imir", axis)``: axis 0 exchanges top
    and bottom, 1 left and right (ISO/IEC 23008-12, as libheif and libavif read it). These, not an
    Exif orientation tag, say how the picture is shown. Empty if there are none or the boxes cannot
    be read (a decoder then refuses the file anyway).
    """
    try:
        return _heif_transforms(data)
    except (struct.error, IndexError, ValueError):
        return []


def _heif_transforms(data: bytes) -> list[tuple[str, int]]:
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        return []
    body = meta[0] + 4  # meta is a full box: skip version/flags
    pitm = _child(data, body, meta[1], b"pitm")
    iprp = _child(data, body, meta[1], b"iprp")
    if pitm is None or iprp is None:
        return []
    start = pitm[0]
    if data[start] == 0:
        (primary,) = struct.unpack(">H", data[start + 4 : start + 6])
    else:
        (primary,) = struct.unpack(">I", data[start + 4 : start + 8])
    children = _boxes(data, iprp[0], iprp[1])
    ipco = next(((s, e) for k, s, e in children if k == b"ipco"), None)
    if ipco is None:
        return []
    props = _boxes(data, ipco[0], ipco[1])
    out: list[tuple[str, int]] = []
    for kind, s, e in children:
        if kind != b"ipma":
            continue
        version, flags = data[s], int.from_bytes(data[s + 1 : s + 4], "big")
        (entries,) = struct.unpack(">I", data[s + 4 : s + 8])
        if entries > _MAX_IPMA_ENTRIES:  # a crafted count would keep this loop busy for minutes
            return []
        i = s + 8
        for _ in range(entries):
            if i >= e:
                return []
            if version < 1:
                (item,) = struct.unpack(">H", data[i : i + 2])
                i += 2
            else:
                (item,) = struct.unpack(">I", data[i : i + 4])
                i += 4
            count = data[i]
            i += 1
            for _ in range(count):
                if i >= e:
                    return []
                if flags & 1:
                    (index,) = struct.unpack(">H", data[i : i + 2])
                    index &= 0x7FFF
                    i += 2
                else:
                    index = data[i] & 0x7F
                    i += 1
                if item != primary or not 0 < index <= len(props):
                    continue
                prop, at, _end = props[index - 1]
                if prop == b"irot":
                    out.append(("irot", data[at] & 3))
                elif prop == b"imir":
                    out.append(("imir", data[at] & 1))
            if i > e:
                return []
    return out


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """ISO BMFF boxes in ``data[start:end]`` as (type, payload start, payload end)."""
    out = []
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:  # 64-bit size follows
            (size,) = struct.unpack(">Q", data[i + 8 : i + 16])
            header = 16
        elif size == 0:  # to the end of the enclosing box
            size = end - i
        if size < header or i + size > end:
            break
        out.append((kind, i + header, i + size))
        i += size
    return out


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    return None


_READERS = {
    Format.JPEG: _jpeg,
    Format.PNG: _png,
    Format.WEBP: _webp,
    Format.BMP: _bmp,
    Format.TIFF: _tiff,
    Format.GIF: _gif,
    Format.HEIF: _heif,
    Format.AVIF: _heif,
}
