"""Matching 1k probes against a 10k gallery: a Python loop vs rollcall's vectorised matcher.

The loop is what per-face code does: for each probe, for each gallery row, a numpy distance,
keeping the best. It is timed on a sample of probes (a full run would take minutes) and scaled to
all of them: its cost is strictly per probe. The vectorised side runs ``matcher.match_faces`` on
all 1k probes (distance matrix, per-student best, threshold, greedy one-to-one assignment, top-k).
Both must pick the same student for every sampled probe. Run: ``.venv/bin/python
bench/bench_matching.py`` (threadpoolctl pins BLAS to one thread, so the ratio is not a thread
count; pass --threads to change it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from rollcall_job.matcher import match_faces

DIM = 128


def loop_match(
    probes: np.ndarray, gallery: np.ndarray, ids: list[str], threshold: float
) -> list[str]:
    out = []
    for p in probes:
        best, best_d = "unknown", float("inf")
        for sid, g in zip(ids, gallery, strict=True):
            d = float(np.linalg.norm(p - g))
            if d < best_d:
                best, best_d = sid, d
        out.append(best if best_d <= threshold else "unknown")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gallery", type=int, default=10_000)
    ap.add_argument("--probes", type=int, default=1_000)
    ap.add_argument("--loop-sample", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(args.gallery, DIM)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    ids = [f"s{i:05d}" for i in range(args.gallery)]
    truth = rng.choice(args.gallery, size=args.probes, replace=False)
    probes = gallery[truth] + 0.02 * rng.normal(size=(args.probes, DIM)).astype(np.float32)
    offsets = np.arange(args.gallery, dtype=np.intp)
    threshold = 0.6
    sample = probes[: args.loop_sample]
    with threadpool_limits(args.threads):
        loop_t = vec_t = float("inf")
        for _ in range(args.rounds):  # interleaved, best of N for each
            t = time.perf_counter()
            loop_ids = loop_match(sample, gallery, ids, threshold)
            loop_t = min(loop_t, (time.perf_counter() - t) / len(sample) * args.probes)
            t = time.perf_counter()
            matches = match_faces(
                probes, gallery, offsets, ids, metric="euclidean", threshold=threshold, k=1
            )
            vec_t = min(vec_t, time.perf_counter() - t)
    assert [m.student_id for m in matches[: len(sample)]] == loop_ids
    assert [m.student_id for m in matches] == [ids[i] for i in truth]
    print(
        f"matching: {args.probes} probes x {args.gallery} gallery rows, dim {DIM}, "
        f"BLAS threads {args.threads}"
    )
    print(
        f"  python loop (per-pair np.linalg.norm; {len(sample)} probes timed, scaled): "
        f"{loop_t:9.3f} s"
    )
    print(f"  vectorised match_faces (all probes, assignment + top-1)      : {vec_t:9.3f} s")
    print(f"RATIO matching loop/vectorised = {loop_t / vec_t:.0f}x (target >= 100x)")


if __name__ == "__main__":
    main()
