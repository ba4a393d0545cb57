"""The gallery store: raw float32 round trip, roster-restricted load, atomic guarded writes."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from rollcall_contract import keys
from rollcall_job.gallery import (
    Gallery,
    GalleryMeta,
    GalleryMismatch,
    GalleryNotFound,
    GalleryStore,
    decode,
    encode,
)

META = GalleryMeta("dlib-resnet-v1", 8, "euclidean")


def _emb(k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k, 8)).astype(np.float32)


def test_encode_is_raw_little_endian_float32() -> None:
    a = np.arange(8, dtype=np.float64)
    raw = encode(a, 8)
    assert raw == np.arange(8, dtype="<f4").tobytes()
    assert decode(raw, 8).tolist() == [list(range(8))]


@pytest.mark.parametrize("bad", [np.zeros((2, 7)), np.zeros((0, 8)), np.zeros((1, 2, 8))])
def test_encode_rejects_wrong_shapes(bad: np.ndarray) -> None:
    with pytest.raises(GalleryMismatch):
        encode(bad, 8)


def test_decode_rejects_partial_rows() -> None:
    with pytest.raises(GalleryMismatch):
        decode(b"\0" * 33, 8)


def test_put_then_load_restricted_to_roster(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, "school-a")
    students = {"s1": _emb(1, 1), "s2": _emb(3, 2), "s3": _emb(2, 3)}
    store.put("6b", META, students)
    g = store.load("6b", META, roster=["s3", "s1", "nobody", "s1"])
    assert g.student_ids == ("s3", "s1")
    assert g.missing == ("nobody",)
    assert g.offsets.tolist() == [0, 2]
    np.testing.assert_array_equal(g.embeddings, np.vstack([students["s3"], students["s1"]]))
    # stored bytes are raw float32 plus a meta hash, nothing else
    raw = redis_client.hget(keys.gallery("school-a", "6b", META.model_id), "s2")
    assert raw == students["s2"].astype("<f4").tobytes()
    meta = redis_client.hgetall(keys.gallery_meta("school-a", "6b", META.model_id))
    assert meta[b"model_id"] == b"dlib-resnet-v1" and meta[b"dim"] == b"8"
    assert meta[b"metric"] == b"euclidean" and meta[b"dtype"] == b"<f4"


def test_load_without_roster_returns_every_student(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {"b": _emb(1, 1), "a": _emb(2, 2)})
    g = store.load("6b", META)
    assert g.student_ids == ("a", "b") and len(g.embeddings) == 3


def test_load_is_one_round_trip(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {f"s{i}": _emb(2, i) for i in range(50)})
    calls = []
    real = redis.client.Pipeline.execute

    def counting(self: redis.client.Pipeline, raise_on_error: bool = True) -> object:
        calls.append(len(self.command_stack))
        return real(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    monkeypatch.setattr(
        redis.Redis, "execute_command", lambda *a, **k: pytest.fail("unexpected direct command")
    )
    g = store.load("6b", META, roster=[f"s{i}" for i in range(50)])
    assert len(g) == 50
    assert calls == [3]  # meta, packed copy, HLEN: one round trip


def test_missing_gallery_is_a_clear_error(redis_client: redis.Redis) -> None:
    with pytest.raises(GalleryNotFound):
        GalleryStore(redis_client, "school-a").load("nope", META)


@pytest.mark.parametrize(
    "other",
    [GalleryMeta("dlib-resnet-v1", 16, "euclidean"), GalleryMeta("dlib-resnet-v1", 8, "cosine")],
)
def test_mismatched_meta_is_refused_on_load_and_on_write(
    redis_client: redis.Redis, other: GalleryMeta
) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {"s1": _emb(1, 1)})
    with pytest.raises(GalleryMismatch, match=r"dim|metric"):
        store.load("6b", other)
    with pytest.raises(GalleryMismatch):
        store.put("6b", other, {"s2": np.zeros((1, other.dim), np.float32)})
    assert redis_client.hkeys(keys.gallery("school-a", "6b", META.model_id)) == [b"s1"]


def test_corrupt_stored_value_is_a_clear_error(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {"s1": _emb(1, 1)})
    # a foreign writer that follows the contract (bumps meta's stamp) but writes garbage
    redis_client.hset(keys.gallery("school-a", "6b", META.model_id), "s1", b"\x80\x04garbage")
    redis_client.hset(keys.gallery_meta("school-a", "6b", META.model_id), "updated", "later")
    with pytest.raises(GalleryMismatch, match="s1"):
        store.load("6b", META)


def _same(a: Gallery, b: Gallery) -> None:
    assert (a.student_ids, a.missing) == (b.student_ids, b.missing)
    assert a.offsets.tolist() == b.offsets.tolist()
    np.testing.assert_array_equal(a.embeddings, b.embeddings)


@pytest.mark.parametrize(
    "roster",
    [
        None,
        ["s3", "s0"],
        ["s5", "s1", "s1", "ghost", "s2"],
        ["ghost"],
        [f"s{i}" for i in range(8)],
        [*(f"s{i}" for i in range(8)), "ghost"],
    ],
)
def test_packed_copy_and_hash_give_the_same_gallery(
    redis_client: redis.Redis, roster: list[str] | None
) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {f"s{i}": _emb(1 + i % 3, i) for i in range(8)})
    fast = store.load("6b", META, roster)
    redis_client.delete(keys.gallery_packed("school-a", "6b", META.model_id))
    _same(fast, store.load("6b", META, roster))


@pytest.mark.parametrize("edit", ["foreign_student", "garbage_packed", "restamped"])
def test_a_stale_or_broken_packed_copy_is_not_trusted(redis_client: redis.Redis, edit: str) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {"s1": _emb(1, 1), "s2": _emb(2, 2)})
    newcomer = _emb(1, 3)
    gkey, pkey = (
        keys.gallery("school-a", "6b", META.model_id),
        keys.gallery_packed("school-a", "6b", META.model_id),
    )
    if edit == "foreign_student":  # written straight into the hash, meta untouched
        redis_client.hset(gkey, "s3", newcomer.tobytes())
    elif edit == "garbage_packed":
        redis_client.set(pkey, b"RCG1\xff\xff\xff\x7fnot json")
    else:  # someone rewrote a row and bumped the stamp, leaving the packed copy behind
        redis_client.hset(gkey, "s1", newcomer.tobytes())
        redis_client.hset(keys.gallery_meta("school-a", "6b", META.model_id), "updated", "later")
    g = store.load("6b", META)
    rows = {s: g.embeddings[g.offsets[i]] for i, s in enumerate(g.student_ids)}
    if edit == "foreign_student":
        np.testing.assert_array_equal(rows["s3"], newcomer[0])
    elif edit == "restamped":
        np.testing.assert_array_equal(rows["s1"], newcomer[0])
    else:
        assert g.student_ids == ("s1", "s2") and len(g.embeddings) == 3


def test_put_keeps_the_packed_copy_in_step(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {"s1": _emb(1, 1)})
    store.put("6b", META, {"s2": _emb(2, 2), "s1": _emb(1, 9)})
    fast = store.load("6b", META)
    redis_client.delete(keys.gallery_packed("school-a", "6b", META.model_id))
    _same(fast, store.load("6b", META))
    np.testing.assert_array_equal(fast.embeddings[0], _emb(1, 9)[0])


def test_replace_drops_other_students(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, "school-a")
    store.put("6b", META, {"s1": _emb(1, 1), "s2": _emb(1, 2)})
    store.put("6b", META, {"s3": _emb(1, 3)}, replace=True)
    assert GalleryStore(redis_client, "school-a").load("6b", META).student_ids == ("s3",)


def test_put_is_all_or_nothing(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, "school-a")
    with pytest.raises(Exception, match="NaN"):
        store.put("6b", META, {"ok": _emb(1, 1), "bad": np.full((1, 8), np.nan)})
    assert not redis_client.exists(keys.gallery("school-a", "6b", META.model_id))


def test_from_rows_groups_rows_by_student() -> None:
    rows = [("a", encode(_emb(2, 1), 8)), ("b", encode(_emb(1, 2), 8))]
    g = Gallery.from_rows(META, rows)
    assert g.offsets.tolist() == [0, 2] and g.embeddings.shape == (3, 8)
