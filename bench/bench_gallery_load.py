"""Gallery load, side by side on one real redis-server: the old layout's loop vs rollcall's store.

Old: per student one ZRANGE of embedding ids, then one HGET + pickle.loads per embedding
(2,000 students x 5 embeddings = 12,000 round trips). rollcall: one pipelined round trip (meta +
HMGET of the roster) and one ``np.frombuffer`` over the joined raw float32 bytes. Both produce the
same matrix (checked). Run: ``.venv/bin/python bench/bench_gallery_load.py``.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import redis

from redisrig import redis_server
from rollcall_contract import keys
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.legacy import LegacyLayout, read_legacy

DIM = 128
TENANT = "bench-school"


def seed(client: redis.Redis, students: int, per: int) -> tuple[list[str], GalleryMeta]:
    rng = np.random.default_rng(0)
    layout = LegacyLayout(class_code="6B", period="2024-T1")
    meta = GalleryMeta("dlib-resnet-v1", DIM, "euclidean")
    ids = [f"student-{i:05d}" for i in range(students)]
    vectors = {sid: rng.normal(size=(per, DIM)) for sid in ids}  # float64, as the old code stored
    pipe = client.pipeline(transaction=False)
    for sid, rows in vectors.items():
        for j, row in enumerate(rows):
            emb_id = f"{sid}-{j}"
            pipe.zadd(layout.face(sid), {emb_id: j})
            pipe.hset(layout.features, emb_id, pickle.dumps(row))
            pipe.hset(layout.photos, emb_id, f"/photos/{sid}/{j}.jpg")
    pipe.execute()
    GalleryStore(client, TENANT).put("6B", meta, vectors)
    return ids, meta


def old_load(client: redis.Redis, ids: list[str]) -> np.ndarray:
    layout = LegacyLayout(class_code="6B", period="2024-T1")
    rows = []
    for sid in ids:
        for emb_id in cast(list[bytes], client.zrange(layout.face(sid), 0, -1)):
            raw = cast(bytes, client.hget(layout.features, emb_id))
            rows.append(pickle.loads(raw))  # the unsafe old way, measured as it was
    return np.asarray(rows, dtype=np.float32)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` time of each contender, run in turn each round so noise hits all alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--students", type=int, default=2000)
    ap.add_argument("--per-student", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as server:
        # the job's client settings (rollcall_job.__main__.redis_client)
        client = redis.Redis.from_url(server.url, socket_read_size=1 << 20)
        ids, meta = seed(client, args.students, args.per_student)
        store = GalleryStore(client, TENANT)
        n = args.students * args.per_student
        layout = LegacyLayout(class_code="6B", period="2024-T1")
        np.testing.assert_allclose(store.load("6B", meta, ids).embeddings, old_load(client, ids))
        # the same gallery without its packed copy: what the HMGET fallback costs
        client.copy(
            keys.gallery(TENANT, "6B", meta.model_id),
            keys.gallery(TENANT, "6B-hash-only", meta.model_id),
        )
        client.copy(
            keys.gallery_meta(TENANT, "6B", meta.model_id),
            keys.gallery_meta(TENANT, "6B-hash-only", meta.model_id),
        )
        best = interleaved(
            {
                "old": lambda: old_load(client, ids),
                "importer": lambda: read_legacy(client, layout, DIM),
                "hash": lambda: store.load("6B-hash-only", meta, ids),
                "new": lambda: store.load("6B", meta, ids),
            },
            args.rounds,
        )
        old_t, pip_t, new_t = best["old"], best["importer"], best["new"]
        hash_t = best["hash"]
        print(
            f"gallery: {args.students} students x {args.per_student} = {n} embeddings, "
            f"dim {DIM}, redis {server.url}"
        )
        print(f"  old: zrange + hget + pickle.loads each  : {old_t * 1e3:9.1f} ms")
        print(
            f"  legacy importer (pipelined, safe)       : {pip_t * 1e3:9.1f} ms "
            f"({old_t / pip_t:5.1f}x)"
        )
        print(
            f"  per-student hash, HMGET roster (no pack): {hash_t * 1e3:9.1f} ms "
            f"({old_t / hash_t:5.1f}x)"
        )
        print(
            f"  rollcall GalleryStore.load (roster)     : {new_t * 1e3:9.1f} ms "
            f"({old_t / new_t:5.1f}x)"
        )
        print(f"RATIO gallery_load old/rollcall = {old_t / new_t:.1f}x (target >= 100x)")


if __name__ == "__main__":
    main()
