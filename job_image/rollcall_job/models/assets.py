"""Real face photos for tests, benchmarks and the demo, fetched into the cache on first use.

``photo(name)`` returns a local path. Names (all third-party, never committed):

From ``face_recognition`` 1.3.0 (tests/test_images), one person unless noted:
    ``obama.jpg``, ``obama2.jpg``, ``obama3.jpg``   three distinct photos of Barack Obama
    ``biden.jpg``                                   Joe Biden
    ``obama_partial_face.jpg``, ``obama_partial_face2.jpg``  half-cut faces
From ``insightface`` 2.1 (insightface/data/images):
    ``t1.jpg``                                      group photo, six people, six faces
    ``Tom_Hanks_54745.png``                         one face
    ``mask_white.jpg``, ``mask_blue.jpg``, ``mask_black.jpg``, ``mask_green.jpg``  mask textures,
                                                    no faces
From scikit-image (``skimage.data.astronaut()``, needs scikit-image):
    ``astronaut.png``                               Eileen Collins, one face
"""

from __future__ import annotations

from pathlib import Path

from rollcall_job.models.cache import cache_root
from rollcall_job.models.pins import spec
from rollcall_job.models.sdists import extract_member, sdist_path

_FACE_RECOGNITION = (*spec("pypi", "face_recognition"), "tests/test_images/")
_INSIGHTFACE = (*spec("pypi", "insightface"), "insightface/data/images/")

SOURCES: dict[str, tuple[str, str, str]] = {
    **dict.fromkeys(
        (
            "obama.jpg",
            "obama2.jpg",
            "obama3.jpg",
            "biden.jpg",
            "obama_partial_face.jpg",
            "obama_partial_face2.jpg",
        ),
        _FACE_RECOGNITION,
    ),
    **dict.fromkeys(
        (
            "t1.jpg",
            "Tom_Hanks_54745.png",
            "mask_white.jpg",
            "mask_blue.jpg",
            "mask_black.jpg",
            "mask_green.jpg",
        ),
        _INSIGHTFACE,
    ),
}
SKIMAGE_PHOTOS = ("astronaut.png",)
PHOTO_NAMES = tuple(sorted([*SOURCES, *SKIMAGE_PHOTOS]))


def photos_dir() -> Path:
    return cache_root() / "photos" / "v1"


def photo(name: str) -> Path:
    """Local path of a named photo (see the module docstring), fetched on first use."""
    target = photos_dir() / name
    if target.is_file():
        return target
    if name in SOURCES:
        package, version, folder = SOURCES[name]
        return extract_member(sdist_path(package, version), folder + name, target)
    if name == "astronaut.png":
        import cv2
        from skimage import data

        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part.png")
        rgb = data.astronaut()  # type: ignore[no-untyped-call]
        cv2.imwrite(str(partial), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        partial.replace(target)
        return target
    raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTO_NAMES)}")
