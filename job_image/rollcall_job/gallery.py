"""The class gallery store in Redis: raw little-endian float32 embeddings, never pickles.

Layout (``rollcall_contract.keys``, under the school's ``rollcall:<namespace>:`` prefix): a hash
per gallery and model (field = student id, value = that student's
k x dim embeddings as raw ``<f4`` bytes), a meta hash (model_id, dim, dtype, metric, updated), and a
packed copy of the whole hash in one string value (a small JSON header of ids and row counts, then
the raw float32 rows), rewritten in the same MULTI/EXEC as every change. Why the packed copy: a
class of 2,000 students x 5 embeddings is 5 MB; HMGET of 2,000 fields costs the server ~1 us per
field and the client a reply object per field, while one GET of one value costs neither, and that
difference is what separates "pipelined" (~50x the old one-round-trip-per-embedding loop) from the
>= 100x the job needs. The loader reads meta + packed + HLEN in one pipelined round trip and trusts
the packed copy only when its stamp equals meta's ``updated`` and its size equals HLEN; otherwise
(an older writer, a foreign edit) it falls back to HMGET of the roster. Bytes from a network store
are data, not code: decoding them can fail, but cannot execute anything.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import redis

from rollcall_contract import keys, redisclient
from rollcall_job.matcher import Metric

DTYPE = "<f4"
ENROLLED_CHUNK = 256  # students per HMGET of ``GalleryStore.enrolled``
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

    def to_fields(self, updated: str) -> dict[str, str]:
        return {
            "model_id": self.model_id,
            "dim": str(self.dim),
            "dtype": DTYPE,
            "metric": self.metric,
            "updated": updated,
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


PACK_MAGIC = b"RCG1"


def pack(rows: Sequence[tuple[str, bytes]], dim: int, stamp: str) -> bytes:
    """``RCG1`` + u32 header length + JSON {stamp, dim, ids, counts} + the rows' raw bytes."""
    counts = [len(raw) // (4 * dim) for _, raw in rows]
    header = json.dumps(
        {"stamp": stamp, "dim": dim, "ids": [sid for sid, _ in rows], "counts": counts},
        separators=(",", ":"),
    ).encode()
    return b"".join([PACK_MAGIC, struct.pack("<I", len(header)), header, *(raw for _, raw in rows)])


def unpack(blob: bytes, meta: GalleryMeta, stamp: str | None, n_fields: int) -> Gallery | None:
    """The packed gallery, or None when it is stale (another stamp or size) or malformed."""
    if len(blob) < 8 or blob[:4] != PACK_MAGIC:
        return None
    (hlen,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(blob[8 : 8 + hlen])
        ids, counts = list(map(str, header["ids"])), [int(c) for c in header["counts"]]
        if header["stamp"] != stamp or int(header["dim"]) != meta.dim:
            return None
    except (ValueError, KeyError, TypeError):
        return None
    body = memoryview(blob)[8 + hlen :]
    if len(ids) != n_fields or len(counts) != len(ids) or min(counts, default=1) < 1:
        return None
    if len(body) != 4 * meta.dim * sum(counts):
        return None
    emb = np.frombuffer(body, dtype=DTYPE).reshape(-1, meta.dim).astype(np.float32, copy=False)
    offsets = np.zeros(len(counts), dtype=np.intp)
    if counts:
        offsets[1:] = np.cumsum(counts[:-1])
    return Gallery(meta, tuple(ids), emb, offsets)


def restrict(gallery: Gallery, roster: Sequence[str]) -> Gallery:
    """The roster's students only, in roster order (one fancy-index copy); absent ids -> missing."""
    where = {sid: i for i, sid in enumerate(gallery.student_ids)}
    ids = list(dict.fromkeys(roster))
    keep = [where[s] for s in ids if s in where]
    if len(keep) == len(ids) and keep == list(range(len(gallery))):
        return gallery  # the roster is the whole gallery, in its order: nothing to copy
    ends = np.append(gallery.offsets[1:], len(gallery.embeddings))
    starts, stops = gallery.offsets[keep], ends[keep]
    counts = stops - starts
    rows = (
        np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        if keep
        else np.zeros(0, np.intp)
    )
    offsets = np.zeros(len(keep), dtype=np.intp)
    if keep:
        offsets[1:] = np.cumsum(counts[:-1])
    return Gallery(
        gallery.meta,
        tuple(gallery.student_ids[i] for i in keep),
        gallery.embeddings[rows],
        offsets,
        tuple(s for s in ids if s not in where),
    )


def without(gallery: Gallery, erased: Collection[str]) -> Gallery:
    """The gallery less the ``erased`` students, as a copy (``restrict``), so their templates go
    when the old gallery is dropped; the same object when none of them is in it."""
    gone = set(erased)
    if not gone.intersection(gallery.student_ids):
        return gallery
    kept = restrict(gallery, [s for s in gallery.student_ids if s not in gone])
    return replace(kept, missing=tuple(s for s in gallery.missing if s not in gone))


Redis = redis.Redis


class GalleryStore:
    """Thin Redis I/O around the layout above, bound to one tenant (the school's namespace).

    The tenant is fixed when the store is made (the job takes it from its own namespace), so a
    gallery name from a spec can only ever name a gallery of that same school.
    """

    def __init__(self, client: Redis, tenant: str) -> None:
        self.client = client
        self.tenant = keys.check_tenant(tenant)

    def _keys(self, name: str, model_id: str) -> tuple[str, str, str]:
        """(hash, meta, packed) keys of one gallery of this tenant."""
        return (
            keys.gallery(self.tenant, name, model_id),
            keys.gallery_meta(self.tenant, name, model_id),
            keys.gallery_packed(self.tenant, name, model_id),
        )

    def wait_key(self, name: str, model_id: str) -> str:
        """``keys.gallery_wait``: the fresh write of ``confirm``. Not the meta's ``updated`` re-set
        to its value: a concurrent writer may have changed it meanwhile, and after a whole-class
        erase an HSET would bring back a meta of that field alone, which every later put and load
        refuses as malformed."""
        return keys.gallery_wait(self.tenant, name, model_id)

    def confirm(self, name: str, model_id: str, replicas: int) -> None:
        """Wait until ``replicas`` replicas of the gallery's primary hold every write made to it
        so far (``redisclient.confirm_on``); NotReplicated (TRANSIENT) if fewer do in time."""
        redisclient.confirm_on(self.client, self.wait_key(name, model_id), replicas)

    def load(
        self, name: str, expected: GalleryMeta, roster: Sequence[str] | None = None
    ) -> Gallery:
        """Meta, packed copy and HLEN in one pipelined round trip (a second, HMGET of the roster,
        only if the packed copy is stale); the result holds the roster's students, or everyone."""
        gkey, mkey, pkey = self._keys(name, expected.model_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(mkey)
        pipe.get(pkey)
        pipe.hlen(gkey)
        meta_raw, blob, n_fields = pipe.execute()
        if not meta_raw:
            raise GalleryNotFound(f"no gallery {name!r} for model {expected.model_id!r}")
        GalleryMeta.from_fields(meta_raw).check(expected)
        stamp = meta_raw.get(b"updated", b"").decode()
        packed = unpack(blob, expected, stamp, n_fields) if blob else None
        if packed is not None:
            return restrict(packed, roster) if roster else packed
        if roster:
            ids = list(dict.fromkeys(roster))
            data = cast(list[bytes | None], self.client.hmget(gkey, ids))
            rows = [(s, v) for s, v in zip(ids, data, strict=True) if v is not None]
            missing = [s for s, v in zip(ids, data, strict=True) if v is None]
            return Gallery.from_rows(expected, rows, missing)
        everything = cast(dict[bytes, bytes], self.client.hgetall(gkey))
        return Gallery.from_rows(expected, sorted((k.decode(), v) for k, v in everything.items()))

    def enrolled(self, name: str, model_id: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the gallery hash holds now: HMGET on that one key (one hash slot), in
        chunks so no reply is huge. HMGET rather than HEXISTS because the job's ACL user has it;
        the templates it returns are only tested for presence, then dropped."""
        gkey = self._keys(name, model_id)[0]
        held: set[str] = set()
        for i in range(0, len(ids), ENROLLED_CHUNK):
            chunk = list(ids[i : i + ENROLLED_CHUNK])
            values = cast(list[bytes | None], self.client.hmget(gkey, chunk))
            held.update(s for s, v in zip(chunk, values, strict=True) if v is not None)
        return held

    def tombstones(self, name: str) -> dict[str, str]:
        """The class's erase tombstones (``keys.erased``): student id -> a value each erase writes
        anew. One small hash (students erased in the last day), read whole: HGETALL."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(keys.erased(self.tenant, name)))
        return {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}

    def withdraw(
        self, name: str, meta: GalleryMeta, students: Mapping[str, npt.ArrayLike]
    ) -> set[str]:
        """Remove the templates a ``put`` of ``students`` wrote, of those the hash still holds with
        exactly those bytes (a later enrolment's template is left alone): an enrol job's undo for
        students erased while it ran, whose erase may have looked before the put and found nothing.

        The job's ACL user has no HDEL, so the hash is rewritten whole (DEL, then HSET of the
        others) with a new meta stamp and packed copy, in one MULTI/EXEC with the hash and meta
        WATCHed, as ``put``. A hash left empty goes with its meta and packed copy: no gallery, as
        a whole-class erase leaves it (or as before a first enrolment), not an empty one that a
        put after the class erase brought back. Rare (an erase landing during an enrolment).
        Returns the removed.
        """
        encoded = {sid: encode(e, meta.dim) for sid, e in students.items()}
        gkey, mkey, pkey = self._keys(name, meta.model_id)
        removed: set[str] = set()

        def txn(pipe: Any) -> None:
            rows = {k.decode(): v for k, v in pipe.hgetall(gkey).items()}
            removed.clear()
            removed.update(s for s, v in encoded.items() if rows.get(s) == v)
            if not removed:
                return
            rest = sorted((s, v) for s, v in rows.items() if s not in removed)
            stamp = f"{time.time():.6f}"
            pipe.multi()
            if not rest:
                pipe.delete(gkey, mkey, pkey)
                return
            pipe.delete(gkey)
            pipe.hset(gkey, mapping=dict(rest))
            pipe.hset(mkey, "updated", stamp)
            pipe.set(pkey, pack(rest, meta.dim, stamp))

        if encoded:
            self.client.transaction(txn, mkey, gkey)
        return removed

    def meta(self, name: str, model_id: str) -> GalleryMeta | None:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self._keys(name, model_id)[1]))
        return GalleryMeta.from_fields(raw) if raw else None

    def put(
        self,
        name: str,
        meta: GalleryMeta,
        students: Mapping[str, npt.ArrayLike],
        *,
        replace: bool = False,
        held: Collection[str] = (),
    ) -> set[str]:
        """Write students' embeddings, the meta and the packed copy in one MULTI/EXEC.

        The meta and the hash are WATCHed, so a concurrent writer (or one with another model or
        dimension) makes this retry or fail rather than mix incomparable embeddings or leave the
        packed copy behind. ``replace`` drops the gallery's other students. ``held``: who the hash
        held when the writer began (``enrolled``); one of them it no longer holds was erased since
        and is not written back, so an enrol job that started before an erase cannot undo it (an
        erase between this read and the EXEC touches the WATCHed hash: the read is done again).
        Returns the students so left out.
        """
        encoded = {sid: encode(e, meta.dim) for sid, e in students.items()}
        gkey, mkey, pkey = self._keys(name, meta.model_id)
        erased: set[str] = set()

        def txn(pipe: Any) -> None:
            current = pipe.hgetall(mkey)
            if current and not replace:
                GalleryMeta.from_fields(current).check(meta)
            asked = [s for s in encoded if s in held]
            now = pipe.hmget(gkey, asked) if asked else []
            erased.clear()
            erased.update(s for s, v in zip(asked, now, strict=True) if v is None)
            payload = {s: v for s, v in encoded.items() if s not in erased}
            rows = {} if replace else {k.decode(): v for k, v in pipe.hgetall(gkey).items()}
            rows.update(payload)
            stamp = f"{time.time():.6f}"
            pipe.multi()
            if replace:
                pipe.delete(gkey)
            if payload:
                pipe.hset(gkey, mapping=payload)
            pipe.hset(mkey, mapping=meta.to_fields(stamp))
            pipe.set(pkey, pack(sorted(rows.items()), meta.dim, stamp))

        self.client.transaction(txn, mkey, gkey)
        return erased

    def delete(self, name: str, model_id: str) -> None:
        self.client.delete(*self._keys(name, model_id))
