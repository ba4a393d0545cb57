"""Decoding the next photo while the engine works on this one, against decoding in turn. Not a test.

    .venv/bin/python bench/bench_photo_prefetch.py [--rounds N] [--side PX] [--threads N]

The real face photos (``models.assets``) are scaled up to ``--side`` px on their long side and saved
as JPEG, as a phone would; each round reads, decodes, detects and embeds all of them, once through
``iter_read`` (one photo decoded ahead in a background thread) and once with each photo read when
its turn comes. The two modes take turns, first and second alternating, so a burst of other load
hits both alike; the ratio is the median of the rounds' own ratios (best passes printed too).
The time the loop waits for its next photo is measured too: it shows how much decoding is hidden
even when other load blurs the totals. Absolute times depend on the machine and its load; read the
ratios. Also printed: decoding alone and the engine alone, whose sum over the larger bounds the gain.
The last line is ``RATIO photos_per_s prefetch/serial = N.NNx (median of rounds)``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job.faces import FaceEngine, default_model_dir, load_engine
from rollcall_job.models.assets import PHOTO_NAMES, photo
from rollcall_job.photos import (
    Photo,
    PhotoError,
    iter_read,
    list_photos,
    read_or_error,
)

ROOT = Path(__file__).resolve().parent.parent

MAX_BYTES = 40 << 20
Result = tuple[Photo, npt.NDArray[np.uint8] | PhotoError]


def phone_sized_photos(folder: Path, side: int) -> list[Photo]:
    """Every asset photo, scaled so its long side is ``side`` px, as a JPEG of quality 92."""
    for name in PHOTO_NAMES:
        image = cv2.imread(str(photo(name)), cv2.IMREAD_COLOR)
        if image is None:
            continue
        s = side / max(image.shape[:2])
        big = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / (Path(name).stem + ".jpg")), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return list_photos(folder)


def serial(photos: list[Photo]) -> Iterable[Result]:
    return (read_or_error(ph, max_bytes=MAX_BYTES) for ph in photos)


def prefetched(photos: list[Photo]) -> Iterable[Result]:
    return iter_read(photos, max_bytes=MAX_BYTES, ahead=1)


def run(
    engine: FaceEngine, reader: Callable[[list[Photo]], Iterable[Result]], photos: list[Photo]
) -> tuple[float, float, int]:
    """Seconds for one pass over ``photos``, seconds of it spent waiting for the next photo, and
    the number of faces embedded."""
    faces = 0
    waited = 0.0
    start = time.perf_counter()
    it = iter(reader(photos))
    while True:
        t0 = time.perf_counter()
        got = next(it, None)
        waited += time.perf_counter() - t0
        if got is None:
            break
        img = got[1]
        if isinstance(img, PhotoError):
            raise SystemExit(f"unexpected photo error: {img}")
        found = engine.detect(img)
        faces += len(engine.embed(img, found)) if found else 0
    return time.perf_counter() - start, waited, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads (0: its default)"
    )
    args = parser.parse_args()
    engine = load_engine(default_model_dir(), threads=args.threads)
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} threads={args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        photos = phone_sized_photos(Path(tmp), args.side)
        n = len(photos)
        print(
            f"{n} photos, long side {args.side} px, {sum(p.path.stat().st_size for p in photos) / 2**20:.1f} MiB of JPEG"
        )
        images = [img for _, img in serial(photos)]
        t0 = time.perf_counter()
        for _ in serial(photos):
            pass
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for img in images:
            if isinstance(img, np.ndarray) and (found := engine.detect(img)):
                engine.embed(img, found)
        engine_s = time.perf_counter() - t0
        del images
        print(f"decode alone {decode_s:.2f}s   engine alone {engine_s:.2f}s   per pass")
        modes = {"serial": serial, "prefetch": prefetched}
        took: dict[str, list[float]] = {m: [] for m in modes}
        waited: dict[str, list[float]] = {m: [] for m in modes}
        faces: dict[str, int] = {}
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for mode in order:
                t, w, faces[mode] = run(engine, modes[mode], photos)
                took[mode].append(t)
                waited[mode].append(w)
                print(f"round {r} {mode:8s} {t:.2f}s  {n / t:.2f} photos/s  waiting {w:.2f}s")
        if faces["serial"] != faces["prefetch"]:
            raise SystemExit("the two modes found different faces")
        ideal = (decode_s + engine_s) / max(decode_s, engine_s)
        paired = [s / p for s, p in zip(took["serial"], took["prefetch"], strict=True)]
        wait = {m: float(np.median(w)) for m, w in waited.items()}
        print(f"ideal overlap bound (decode + engine) / max(decode, engine) = {ideal:.2f}x")
        print(
            f"median wait for the next photo: serial {wait['serial']:.3f}s, prefetch "
            f"{wait['prefetch']:.3f}s per pass ({1 - wait['prefetch'] / wait['serial']:.0%} hidden)"
        )
        best = {m: min(t) for m, t in took.items()}
        print(f"best pass: serial {best['serial']:.2f}s, prefetch {best['prefetch']:.2f}s")
        print(
            f"RATIO photos_per_s prefetch/serial = {float(np.median(paired)):.2f}x (median of rounds)"
        )


if __name__ == "__main__":
    main()
