"""rollcall_job: the recognition container.

OpenCV reads its decoder pixel limit, ``OPENCV_IO_MAX_IMAGE_PIXELS``, once, when the cv2 library
loads; its default (2**30) lets a 1.35 MB TIFF declaring 30000x30000 pixels inflate to 5.4 GiB and
OOM-kill the pod, losing every photo. Python runs a package's ``__init__`` before any of its
submodules, so setting the limit here, before anything below imports cv2, covers every cv2 import
in the job process whichever submodule comes first. It is the same cap as the job's
``max_image_pixels`` setting (``ROLLCALL_MAX_IMAGE_PIXELS``), unless the variable was already set.
A process that loaded cv2 before importing this package keeps its own limit; ``photos.check``
enforces the cap from the file's header either way, so this is the second line, not the only one.
"""

from __future__ import annotations

import os

# The default of JobSettings.max_image_pixels (a test keeps them equal), copied so that importing
# this package does not pull in pydantic.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


def _pixel_cap() -> int:
    try:
        cap = int(os.environ.get("ROLLCALL_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS))
    except ValueError:  # JobSettings reports a malformed value; OpenCV still gets a sane cap
        return DEFAULT_MAX_IMAGE_PIXELS
    return cap if cap > 0 else DEFAULT_MAX_IMAGE_PIXELS


os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(_pixel_cap()))
