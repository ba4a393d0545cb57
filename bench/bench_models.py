"""Face engines on CPU: the new default against the old one, side by side. Not a test.

    .venv/bin/python bench/bench_models.py [--threads N] [--seconds S] [--photos N]
        [--splits D/E,...]

The two defaults, end to end (detect + align + embed): the new one is RetinaFace with
MobileFaceNet (``detector.card.json`` + ``embedder.card.json``), the old one MTCNN with dlib's
ResNet (``detector-mtcnn.card.json`` in ``<models>/dlib-resnet-v1/``). Figures, in order:

- per-frame latency: a 640x480 frame of the six-person group photo, repeated; the engines take
  turns frame by frame (rotating order) so a burst of other load hits each alike; each reports
  its median frame, split into detect / embed. Two more engines run in the same turns, MTCNN and
  CenterFace with the *new* embedder, for the detector comparison.
- ``detectors alone (same embedder)``: the detect part of those frames, each detector card with
  the same embedder, and each detector on a 4000x3000 class photo (30 faces of 41-87 px).
- throughput, what a job achieves: a folder of ``--photos`` JPEG copies of the frame through the
  job's loop (``pipeline.detect_and_embed``: the next photo decoded *and detected* in a background
  thread while this one is embedded) and through the loop before it, kept here as the candidate
  (``decode ahead only``: detect and embed in this thread); both engines and both loops take turns;
  faces/s and CPU-ms per face (this process, all threads: what a loop costs whatever else runs),
  medians over rounds. The summary line gives both defaults' job-loop faces/s and their CPU-ms per
  face as a ratio, the figure a loaded machine distorts least. The selectable int8 embedder
  (RetinaFace + ``mobilefacenet-sirius-int8-v2``, ``<models>/mobilefacenet-sirius-int8-v2/``)
  takes the same turns and gets its own line; it does not enter the RATIO.
- with ``--splits``, intra-op thread splits (detector/embedder threads, e.g. ``2/2,1/2,1/1``)
  of the new default through the job loop, taking turns the same way: faces/s and CPU-ms per face.
- the new default's frame embedded 1, the engine's batch, or 6 faces at a time; a cold start.

``--threads`` 0 (the default) gives the sessions the job's own default threads
(``runtime.pipelined_threads`` of the CPUs this process may use).

The goal line sets the new default's job-loop faces/s against 300 faces/s. Absolute numbers depend
on the machine and its load (printed); read the ratios. The last line is
``RATIO faces_per_s new/mtcnn = N.Nx``: the new default's faces/s through the job loop over the
old default's (MTCNN + dlib), the same folder, the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job import quality
from rollcall_job.faces import FaceEngine, load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from rollcall_job.models.classphoto import tile_photo
from rollcall_job.photos import Photo, PhotoError, iter_read, list_photos
from rollcall_job.pipeline import detect_and_embed
from rollcall_job.runtime import cpu_budget, pipelined_threads

ROOT = Path(__file__).resolve().parent.parent

NEW, OLD, INT8 = "new default", "old default", "int8 selectable"
NEW_DETECTOR, OLD_DETECTOR = "retinaface", "mtcnn"
NEW_EMBEDDER, OLD_EMBEDDER = "mobilefacenet-sirius-v1", "dlib-resnet-v1"
INT8_EMBEDDER = "mobilefacenet-sirius-int8-v2"  # selectable by spec.model, not a default
DETECTORS = (NEW_DETECTOR, OLD_DETECTOR, "centerface")  # compared with the new embedder
TARGET_FACES_PER_S = 300.0
TARGET_RATIO = 3.0

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


def one_frame(engine: FaceEngine, frame: npt.NDArray[np.uint8]) -> tuple[int, float, float, float]:
    """(faces, detect, align, embed seconds) for one frame."""
    t0 = time.perf_counter()
    found = engine.detect(frame)
    t1 = time.perf_counter()
    crops = engine.align(frame, found)
    t2 = time.perf_counter()
    engine.embed_aligned(crops)
    t3 = time.perf_counter()
    return len(found), t1 - t0, t2 - t1, t3 - t2


def summarise(faces: int, rows: list[tuple[float, float, float]]) -> dict[str, float]:
    times = np.asarray(rows)
    per_frame = times.sum(axis=1)
    median = times[np.argsort(per_frame)[len(per_frame) // 2]]
    total = float(median.sum())
    return {
        "frames": len(rows),
        "faces": faces,
        "faces_per_s": faces / total,
        "ms_per_frame": 1000 * total,
        "detect_ms": 1000 * float(np.median(times[:, 0])),
        "detect_share": median[0] / total,
        "embed_share": median[2] / total,
        "embed_ms_per_face": 1000 * median[2] / max(faces, 1),
    }


def side_by_side(
    engines: dict[str, FaceEngine], frame: npt.NDArray[np.uint8], seconds: float
) -> dict[str, dict[str, float]]:
    """The engines take turns frame by frame (the order rotating) for ``seconds`` in all, so a
    burst of other load on this shared machine hits each alike; a summary per engine."""
    collected: dict[str, list[tuple[float, float, float]]] = {k: [] for k in engines}
    faces: dict[str, int] = {}
    names = list(engines)
    end = time.perf_counter() + seconds
    turn = 0
    while time.perf_counter() < end or turn < 3 * len(names):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            faces[name], *times = one_frame(engines[name], frame)
            collected[name].append((times[0], times[1], times[2]))
        turn += 1
    return {name: summarise(faces[name], rows) for name, rows in collected.items()}


MAX_BYTES = 40 << 20
GATE = quality.QualityGate()


def job_loop(engine: FaceEngine, photos: list[Photo]) -> int:
    """The job's loop (``pipeline.detect_and_embed``): the next photo decoded and detected in a
    background thread while this one is embedded. Faces embedded."""
    return sum(
        len(pf.embeddings)
        for pf in detect_and_embed(engine, photos, max_bytes=MAX_BYTES, gate=GATE)
    )


def decode_ahead_only(engine: FaceEngine, photos: list[Photo]) -> int:
    """The candidate, the job's loop before 051626f: photos decoded one ahead in a background
    thread, detect + quality gate + embed in this one. Faces embedded."""
    faces = 0
    for _, img in iter_read(photos, max_bytes=MAX_BYTES):
        assert not isinstance(img, PhotoError)
        found = engine.detect(img)
        for f in found:
            quality.check(img, f.box, f.score, f.landmarks, GATE)
        faces += len(engine.embed(img, found))
    return faces


Loop = Callable[[FaceEngine, list[Photo]], int]
LOOPS: dict[str, Loop] = {"job loop": job_loop, "decode ahead only": decode_ahead_only}


def throughput(
    engines: dict[str, FaceEngine],
    photos: list[Photo],
    seconds: float,
    loops: dict[str, Loop] = LOOPS,
) -> dict[tuple[str, str], tuple[float, float]]:
    """(faces per second, CPU milliseconds per face) through whole folders of photos, per
    (engine, loop), medians over rounds; the engines and loops take turns (rotating order) like
    ``side_by_side``. The CPU time (this process, all threads) shows what a loop costs whatever
    the other load on the machine: overlap pays only on cores that would otherwise idle."""
    runs = [(e, loop) for e in engines for loop in loops]
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {r: [] for r in runs}
    end = time.perf_counter() + seconds
    turn = 0
    while time.perf_counter() < end or turn < 3:
        for e, loop in runs[turn % len(runs) :] + runs[: turn % len(runs)]:
            t0, c0 = time.perf_counter(), time.process_time()
            faces = loops[loop](engines[e], photos)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rates[(e, loop)].append((faces / wall, 1000 * cpu / faces))
        turn += 1
    return {
        r: (float(np.median([a for a, _ in v])), float(np.median([c for _, c in v])))
        for r, v in rates.items()
    }


def thread_splits(
    models: Path, splits: str, photos: list[Photo], seconds: float
) -> dict[tuple[str, str], tuple[float, float]]:
    """``throughput`` of the new default's job loop for each "detector/embedder" thread split."""
    engines = {}
    for split in splits.split(","):
        det, emb = (int(n) for n in split.split("/"))
        engines[split] = load_engine(models, threads=emb, detector_threads=det)
    return throughput(engines, photos, seconds, {"job loop": job_loop})


def embed_batches(
    engine: FaceEngine, frame: npt.NDArray[np.uint8], sizes: tuple[int, ...], repeats: int = 20
) -> dict[int, float]:
    """Median seconds to embed the frame's faces with the embedder run ``size`` faces at a time,
    for each size in turn (rotating); the engine's own batch size is restored after."""
    crops = engine.align(frame, engine.detect(frame))
    own = engine.embedder.batch_size
    times: dict[int, list[float]] = {s: [] for s in sizes}
    try:
        for r in range(repeats):
            for size in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
                engine.embedder.batch_size = size
                t0 = time.perf_counter()
                engine.embed_aligned(crops)
                times[size].append(time.perf_counter() - t0)
    finally:
        engine.embedder.batch_size = own
    return {s: float(np.median(v)) for s, v in times.items()}


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


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def engine_name(engine: FaceEngine) -> str:
    return f"{engine.detector_card.id} + {engine.embedder_card.id}"


def open_engines(models: Path, threads: int) -> tuple[dict[str, FaceEngine], FaceEngine]:
    """The two defaults and each detector card with the new embedder (the new default is also
    the RetinaFace one), and the new default engine."""
    new = load_engine(models, threads=threads)
    old = load_engine(models / OLD_EMBEDDER, threads=threads, detector=OLD_DETECTOR)
    for engine, (det, emb) in (
        (new, (NEW_DETECTOR, NEW_EMBEDDER)),
        (old, (OLD_DETECTOR, OLD_EMBEDDER)),
    ):
        got = (engine.detector_card.family, engine.embedder_card.id)
        assert got == (det, emb), f"a default changed: {got}"
    same = {d: load_engine(models, threads=threads, detector=d) for d in DETECTORS[1:]}
    return {NEW: new, OLD: old, **same}, new


def open_int8(models: Path, threads: int) -> FaceEngine:
    """The new default's detector with the selectable int8 embedder."""
    engine = load_engine(models / INT8_EMBEDDER, threads=threads)
    got = (engine.detector_card.family, engine.embedder_card.id)
    assert got == (NEW_DETECTOR, INT8_EMBEDDER), f"the int8 set changed: {got}"
    return engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="0: the job's default")
    parser.add_argument(
        "--splits", default="", help="detector/embedder thread splits to compare, e.g. 2/2,1/2"
    )
    parser.add_argument("--seconds", type=float, default=36.0)
    parser.add_argument("--photos", type=int, default=8, help="JPEG frames per throughput round")
    parser.add_argument(
        "--models", type=Path, default=None, help="a model dir (default: the built default set)"
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    models = args.models if args.models is not None else build_models()
    print(f"models: {models} (ready in {time.perf_counter() - t0:.2f} s); {load()}")
    engines, default = open_engines(models, args.threads)
    detectors = {NEW_DETECTOR: NEW, **{d: d for d in DETECTORS[1:]}}  # detector -> engine key
    det, emb = (args.threads,) * 2 if args.threads else pipelined_threads(cpu_budget())
    print(
        f"providers: {', '.join(default.providers)}; intra-op threads: detector {det}, "
        f"embedder {emb}{'' if args.threads else ' (the job default)'}; "
        f"{NEW}: {engine_name(engines[NEW])}; {OLD}: {engine_name(engines[OLD])}"
    )

    t1 = frame_640x480("t1.jpg")
    results = side_by_side(engines, t1, args.seconds)
    for name, r in results.items():
        label = name if name in (NEW, OLD) else f"{name} + {NEW_EMBEDDER}"
        print(
            f"per frame, {label} ({engine_name(engines[name])}), t1.jpg at 640x480: "
            f"{r['faces']:.0f} faces/frame, {r['faces_per_s']:.1f} faces/s, "
            f"{r['ms_per_frame']:.1f} ms/frame (median of {r['frames']:.0f}); "
            f"detect {r['detect_ms']:.1f} ms = {r['detect_share']:.0%} of the frame, "
            f"embed {r['embed_share']:.0%} ({r['embed_ms_per_face']:.1f} ms/face)"
        )
    base = results[detectors[NEW_DETECTOR]]["detect_ms"]
    print(
        f"detectors alone (same embedder {NEW_EMBEDDER}), detect ms per 640x480 frame: "
        + ", ".join(
            f"{d} {results[k]['detect_ms']:.1f} ({results[k]['detect_ms'] / base:.1f}x {NEW_DETECTOR})"
            for d, k in detectors.items()
        )
    )

    source = read_image(photo("t1.jpg"))
    truth = engines[OLD_DETECTOR].detect(source)
    canvas, boxes = tile_photo(source, np.array([f.box for f in truth], np.float32))
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    for name, key in detectors.items():
        start = time.perf_counter()
        found = engines[key].detect(canvas)
        took = time.perf_counter() - start
        got = np.array([((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in found])
        d = np.linalg.norm(centres[:, None] - got.reshape(-1, 2)[None], axis=2)
        hits = int((d.min(axis=1, initial=1e9) < 0.3 * sides).sum())
        print(
            f"detectors alone, {name:10s} 4000x3000 class photo: {hits}/{len(boxes)} faces of "
            f"{sides.min():.0f}-{sides.max():.0f} px found, {len(found) - hits} extra, "
            f"{took:.2f} s"
        )

    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for i in range(args.photos):
            cv2.imwrite(str(Path(tmp) / f"frame{i:03d}.jpg"), t1, [cv2.IMWRITE_JPEG_QUALITY, 92])
        folder = {**{k: engines[k] for k in (NEW, OLD)}, INT8: open_int8(models, args.threads)}
        rates = throughput(folder, list_photos(Path(tmp)), args.seconds)
        if args.splits:
            split_rates = thread_splits(models, args.splits, list_photos(Path(tmp)), args.seconds)
    for (name, loop), (rate, cpu) in rates.items():
        print(
            f"through a loop, {name} {args.photos} JPEG frames, {loop:17s}: {rate:.1f} faces/s, "
            f"{cpu:.1f} CPU-ms/face (medians of rounds)"
        )
    for name in (NEW, OLD):
        gain = rates[(name, "job loop")][0] / rates[(name, "decode ahead only")][0]
        print(f"{name} faces/s job loop / decode ahead only = {gain:.2f}x")
    if args.splits:
        for (split, _), (rate, cpu) in split_rates.items():
            print(
                f"{NEW} through the job loop, detector/embedder intra-op threads {split:>5s}: "
                f"{rate:.1f} faces/s, {cpu:.2f} CPU-ms/face (medians of rounds); {load()}"
            )

    batches = embed_batches(default, t1, (1, default.embedder.batch_size, 6))
    print(
        f"{NEW}: embedding the frame's 6 faces, run N faces at a time: "
        + ", ".join(f"N={n} {1000 * t:.1f} ms" for n, t in batches.items())
        + f" (the engine's N on {default.providers[0]}: {default.embedder.batch_size})"
    )

    runs = [cold_start(models, args.threads) for _ in range(3)]
    full = sorted(f for f, _ in runs)[1]
    bare = sorted(b for _, b in runs)[1]
    print(
        f"{NEW}: cold start (median of 3): {full:.2f} s to the first embedding "
        f"(bare python {bare:.3f} s)"
    )

    new, old = results[NEW], results[OLD]
    (new_rate, new_cpu), (old_rate, old_cpu) = rates[(NEW, "job loop")], rates[(OLD, "job loop")]
    print(
        f"per frame: {NEW} {new['ms_per_frame']:.1f} ms vs {OLD} {old['ms_per_frame']:.1f} ms "
        f"({new['faces_per_s'] / old['faces_per_s']:.1f}x faces/s); through the job loop: "
        f"{NEW} {new_rate:.0f} faces/s vs {OLD} {old_rate:.0f}, CPU-ms/face {OLD}/{NEW} = "
        f"{old_cpu / new_cpu:.1f}x (what other load changes least)"
    )
    print(
        f"goal: {NEW} {new_rate:.0f} faces/s through the job loop against "
        f"{TARGET_FACES_PER_S:.0f} faces/s ({new_cpu:.1f} CPU-ms/face; "
        f"{TARGET_FACES_PER_S:.0f}/s on {os.cpu_count()} cores allows "
        f"{1000 * (os.cpu_count() or 1) / TARGET_FACES_PER_S:.1f}); ratio goal "
        f">= {TARGET_RATIO:.0f}x; {load()}"
    )
    int8_rate, int8_cpu = rates[(INT8, "job loop")]
    print(
        f"{INT8} ({INT8_EMBEDDER}) through the job loop: {int8_rate:.0f} faces/s, "
        f"{int8_cpu:.1f} CPU-ms/face: {int8_rate / new_rate:.2f}x {NEW}'s faces/s, "
        f"{new_cpu / int8_cpu:.2f}x less CPU per face; {int8_rate / old_rate:.1f}x {OLD}'s faces/s"
    )
    print(f"RATIO faces_per_s new/mtcnn = {new_rate / old_rate:.1f}x")


if __name__ == "__main__":
    main()
