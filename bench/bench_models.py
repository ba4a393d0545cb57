"""Face models on CPU: end-to-end faces/s at 640x480 and cold start. Not a test.

    .venv/bin/python bench/bench_models.py [--threads N] [--seconds S]

Throughput: a 640x480 frame of the six-person group photo, detect + align + embed, repeated;
the stages are timed side by side in the same run so their shares are comparable, and the
median frame is reported (plus the mean) because these machines are shared. Cold start:
a fresh process from ``python`` start to the first face embedded, next to a bare interpreter
start measured the same way. Absolute numbers depend on the machine; read the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "job_image"))

from rollcall_job.faces import FaceEngine, load_engine, read_image  # noqa: E402
from rollcall_job.models.assets import photo  # noqa: E402
from rollcall_job.models.build import build_models  # noqa: E402

TARGET_FACES_PER_S = 20.0
TARGET_COLD_START_S = 3.0

COLD_START = """
import time, sys
t0 = time.perf_counter()
sys.path.insert(0, {job!r})
from rollcall_job.faces import load_engine, read_image
from pathlib import Path
engine = load_engine(Path({models!r}), threads={threads})
image = read_image(Path({photo!r}))
vectors = engine.embed(image, engine.detect(image)[:1])
assert vectors.shape[0] == 1
print(time.perf_counter() - t0)
"""


def frame_640x480(name: str) -> npt.NDArray[np.uint8]:
    """The photo scaled to fit 640x480, centred on black (what a classroom camera sends)."""
    image = read_image(photo(name))
    h, w = image.shape[:2]
    s = min(640 / w, 480 / h)
    small = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    out = np.zeros((480, 640, 3), dtype=np.uint8)
    y, x = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def throughput(
    engine: FaceEngine, frame: npt.NDArray[np.uint8], seconds: float
) -> dict[str, float]:
    """Per-frame stage times over ``seconds``; the median frame resists bursts of other load."""
    rows: list[tuple[float, float, float]] = []
    faces = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rows) < 5:
        t0 = time.perf_counter()
        found = engine.detect(frame)
        t1 = time.perf_counter()
        crops = engine.align(frame, found)
        t2 = time.perf_counter()
        engine.embed_aligned(crops)
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2))
        faces = len(found)  # the same frame every time
    times = np.asarray(rows)
    per_frame = times.sum(axis=1)
    median = times[np.argsort(per_frame)[len(per_frame) // 2]]
    total = float(median.sum())
    return {
        "frames": len(rows),
        "faces_per_frame": faces,
        "faces_per_s": faces / total,
        "faces_per_s_mean": faces * len(rows) / float(per_frame.sum()),
        "ms_per_frame": 1000 * total,
        "detect_share": median[0] / total,
        "align_share": median[1] / total,
        "embed_share": median[2] / total,
        "embed_ms_per_face": 1000 * median[2] / max(faces, 1),
    }


def cold_start(models: Path, threads: int) -> tuple[float, float]:
    """(seconds to first embedding in a new process, seconds for a bare interpreter start)."""
    script = COLD_START.format(
        job=str(ROOT / "job_image"),
        models=str(models),
        threads=threads,
        photo=str(photo("obama.jpg")),
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env=env)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    bare = time.perf_counter() - t0
    return full, bare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    models = build_models()
    print(f"models: {models} (ready in {time.perf_counter() - t0:.2f} s)")
    engine = load_engine(models, threads=args.threads)
    print(f"providers: {', '.join(engine.providers)}; intra-op threads: {args.threads}")

    frames = {name: frame_640x480(name) for name in ("t1.jpg", "obama.jpg")}
    for name, frame in frames.items():
        r = throughput(engine, frame, args.seconds)
        print(
            f"{name} at 640x480: {r['faces_per_frame']:.0f} faces/frame, "
            f"{r['faces_per_s']:.1f} faces/s ({r['faces_per_s'] / TARGET_FACES_PER_S:.2f}x the "
            f"{TARGET_FACES_PER_S:.0f}/s target; mean over {r['frames']:.0f} frames "
            f"{r['faces_per_s_mean']:.1f}), {r['ms_per_frame']:.0f} ms/frame; "
            f"time shares detect {r['detect_share']:.0%} / align {r['align_share']:.0%} / "
            f"embed {r['embed_share']:.0%}; embed {r['embed_ms_per_face']:.1f} ms/face"
        )

    # Idle onnxruntime threads sleeping (the default) vs spinning, interleaved on the same frame.
    spinning = load_engine(models, threads=args.threads, spin=True)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(3):
        for spin, eng in ((False, engine), (True, spinning)):
            r = throughput(eng, frames["t1.jpg"], args.seconds / 6)
            rates[spin].append(r["faces_per_s"])
    sleep_rate, spin_rate = float(np.median(rates[False])), float(np.median(rates[True]))
    print(
        f"idle threads sleeping vs spinning (t1.jpg, interleaved): {sleep_rate:.1f} vs "
        f"{spin_rate:.1f} faces/s, ratio {sleep_rate / spin_rate:.2f}"
    )

    runs = [cold_start(models, args.threads) for _ in range(3)]
    full = sorted(f for f, _ in runs)[1]
    bare = sorted(b for _, b in runs)[1]
    print(
        f"cold start (median of 3): {full:.2f} s to the first embedding "
        f"({full / TARGET_COLD_START_S:.2f}x the {TARGET_COLD_START_S:.0f} s budget; "
        f"{full / bare:.0f}x a bare interpreter start of {bare:.3f} s)"
    )


if __name__ == "__main__":
    main()
