"""The class gallery store in Redis: raw little-endian float32 embeddings, never pickles.

Layout (``keys.gallery`` / ``keys.gallery_meta``): one hash per gallery and model whose field is the
student id and whose value is that student's k x dim embeddings as raw ``<f4`` bytes, plus a meta
hash (model_id, dim, dtype, metric, updated). Loading a class is one pipelined round trip (meta +
HMGET of the roster, or HGETALL when no roster is given) and one ``np.frombuffer`` over the joined
bytes. Bytes from a network store are data, not code: decoding them can fail, but cannot execute
anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import redis

from rollcall_job import keys
from rollcall_job.matcher import Metric

DTYPE = "<f4"
FloatArray = npt.NDArray[np.float32]


class GalleryError(Exception):
    """The gallery cannot be used for this job (bad input: retrying will not help)."""


class GalleryNotFound(GalleryError):
    pass


class GalleryMismatch(GalleryError):
    """Stored embeddings come from another model, dimension or metric than the job's."""


@dataclass(frozen=True)
class GalleryMeta:
    model_id: str
    dim: int
    metric: Metric

    def to_fields(self) -> dict[str, str]:
        return {
            "model_id": self.model_id,
            "dim": str(self.dim),
            "dtype": DTYPE,
            "metric": self.metric,
            "updated": f"{time.time():.3f}",
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> GalleryMeta:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        try:
            if f.get("dtype", DTYPE) != DTYPE:
                raise GalleryMismatch(f"unsupported gallery dtype {f['dtype']!r}")
            metric = f["metric"]
            if metric not in ("cosine", "euclidean"):
                raise GalleryMismatch(f"unsupported gallery metric {metric!r}")
            return cls(f["model_id"], int(f["dim"]), cast(Metric, metric))
        except (KeyError, ValueError) as e:
            raise GalleryMismatch(f"malformed gallery meta: {e!r}") from e

    def check(self, expected: GalleryMeta) -> None:
        """Raise unless embeddings with this meta can be compared with ``expected``'s."""
        mine = (self.model_id, self.dim, self.metric)
        theirs = (expected.model_id, expected.dim, expected.metric)
        if mine != theirs:
            raise GalleryMismatch(
                f"gallery holds model={self.model_id} dim={self.dim} metric={self.metric}, "
                f"job needs model={expected.model_id} dim={expected.dim} metric={expected.metric}"
            )


def encode(embeddings: npt.ArrayLike, dim: int) -> bytes:
    """k x dim embeddings as raw little-endian float32 bytes."""
    a = np.asarray(embeddings, dtype=DTYPE)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim or a.shape[0] == 0:
        raise GalleryMismatch(f"expected k x {dim} embeddings, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise GalleryError("embeddings contain NaN or infinity")
    return a.tobytes()


def decode(raw: bytes, dim: int) -> FloatArray:
    """Raw bytes back into k x dim float32 rows; a partial row is an error."""
    row = 4 * dim
    if not raw or len(raw) % row:
        raise GalleryMismatch(f"stored embedding of {len(raw)} bytes is not a multiple of {row}")
    return np.frombuffer(raw, dtype=DTYPE).reshape(-1, dim).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Gallery:
    """Rows grouped by student: rows ``offsets[i]:offsets[i+1]`` are ``student_ids[i]``'s."""

    meta: GalleryMeta
    student_ids: tuple[str, ...]
    embeddings: FloatArray
    offsets: npt.NDArray[np.intp]
    missing: tuple[str, ...] = ()  # roster ids with no enrolment

    @classmethod
    def from_rows(
        cls, meta: GalleryMeta, rows: Sequence[tuple[str, bytes]], missing: Sequence[str] = ()
    ) -> Gallery:
        """Build from (student id, raw bytes) pairs with one join and one ``frombuffer``."""
        row = 4 * meta.dim
        counts = []
        for sid, raw in rows:
            if not raw or len(raw) % row:
                raise GalleryMismatch(
                    f"embedding of student {sid!r} has {len(raw)} bytes, not a multiple of {row}"
                )
            counts.append(len(raw) // row)
        flat = np.frombuffer(b"".join(raw for _, raw in rows), dtype=DTYPE)
        emb = flat.reshape(-1, meta.dim).astype(np.float32, copy=False)
        offsets = np.zeros(len(counts), dtype=np.intp)
        if counts:
            offsets[1:] = np.cumsum(counts[:-1])
        return cls(meta, tuple(s for s, _ in rows), emb, offsets, tuple(missing))

    def __len__(self) -> int:
        return len(self.student_ids)


Redis = redis.Redis


class GalleryStore:
    """Thin Redis I/O around the layout above."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    def load(
        self, name: str, expected: GalleryMeta, roster: Sequence[str] | None = None
    ) -> Gallery:
        """One pipelined round trip: meta plus the roster's rows (or every row without a roster)."""
        gkey = keys.gallery(name, expected.model_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.gallery_meta(name, expected.model_id))
        if roster:
            ids = list(dict.fromkeys(roster))
            pipe.hmget(gkey, ids)
        else:
            pipe.hgetall(gkey)
        meta_raw, data = pipe.execute()
        if not meta_raw:
            raise GalleryNotFound(f"no gallery {name!r} for model {expected.model_id!r}")
        GalleryMeta.from_fields(meta_raw).check(expected)
        if roster:
            rows = [(s, v) for s, v in zip(ids, data, strict=True) if v is not None]
            missing = [s for s, v in zip(ids, data, strict=True) if v is None]
        else:
            rows = sorted((k.decode(), v) for k, v in data.items())
            missing = []
        return Gallery.from_rows(expected, rows, missing)

    def meta(self, name: str, model_id: str) -> GalleryMeta | None:
        raw = cast(dict[bytes, bytes], self.client.hgetall(keys.gallery_meta(name, model_id)))
        return GalleryMeta.from_fields(raw) if raw else None

    def put(
        self,
        name: str,
        meta: GalleryMeta,
        students: Mapping[str, npt.ArrayLike],
        *,
        replace: bool = False,
    ) -> None:
        """Write students' embeddings and the meta in one MULTI/EXEC.

        The existing meta is WATCHed, so a concurrent writer with another model/dimension makes this
        fail rather than mix incomparable embeddings. ``replace`` drops the other students.
        """
        payload = {sid: encode(e, meta.dim) for sid, e in students.items()}
        mkey, gkey = keys.gallery_meta(name, meta.model_id), keys.gallery(name, meta.model_id)

        def txn(pipe: Any) -> None:
            current = pipe.hgetall(mkey)
            if current and not replace:
                GalleryMeta.from_fields(current).check(meta)
            pipe.multi()
            if replace:
                pipe.delete(gkey)
            if payload:
                pipe.hset(gkey, mapping=payload)
            pipe.hset(mkey, mapping=meta.to_fields())

        self.client.transaction(txn, mkey)

    def delete(self, name: str, model_id: str) -> None:
        self.client.delete(keys.gallery(name, model_id), keys.gallery_meta(name, model_id))
