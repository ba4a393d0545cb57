"""Legacy galleries (pickled features) convert to the safe layout; hostile pickles never run."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import redis

from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.legacy import LegacyLayout, UnsafePickle, import_legacy, main, safe_loads

META = GalleryMeta("dlib-resnet-v1", 128, "euclidean")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _EvalExploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_plain_numeric_arrays_load(protocol: int, dtype: type) -> None:
    a: np.ndarray = (np.arange(128) % 7).astype(dtype)
    got = safe_loads(pickle.dumps(a, protocol=protocol))
    assert got.dtype == np.float32 and got.tolist() == a.astype(np.float32).tolist()


def test_python2_numpy_pickle_loads() -> None:
    """What numpy under Python 2 wrote: py2 ``str`` (BINSTRING) for the raw data."""
    raw = np.arange(4, dtype="<f8").tobytes()
    payload = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02"
        b"U\x01b\x87q\x03Rq\x04(K\x01K\x04\x85q\x05cnumpy\ndtype\nq\x06U\x02f8K\x00K\x01\x87Rq\x07"
        b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
        + len(raw).to_bytes(4, "little")
        + raw
        + b"tb."
    )
    assert safe_loads(payload).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_python2_style_pickle_of_a_list_loads() -> None:
    assert safe_loads(pickle.dumps([0.5, 1.0, 2], protocol=0)).tolist() == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("exploit", [_Exploit, _EvalExploit])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_not_executed(
    tmp_path: Path, exploit: type, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(exploit(marker), protocol=protocol)
    # the control: the stock unpickler would run it
    assert b"system" in payload or b"eval" in payload
    with pytest.raises(UnsafePickle, match="refused global"):
        safe_loads(payload)
    assert not marker.exists()


def test_exploit_hidden_inside_an_array_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    arr = np.array([_Exploit(marker)], dtype=object)
    with pytest.raises(UnsafePickle):
        safe_loads(pickle.dumps(arr, protocol=2))
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        np.array(["a", "b"]),
        np.array([1 + 2j]),
        np.zeros(2, dtype=[("x", "f4")]),
        {"a": 1},
        np.ma.masked_array([1.0, 2.0]),
        "text",
        np.float32(1.5),
    ],
)
def test_non_numeric_or_non_array_objects_are_refused(obj: object) -> None:
    with pytest.raises(UnsafePickle):
        safe_loads(pickle.dumps(obj, protocol=4))


def test_truncated_pickle_is_refused() -> None:
    data = pickle.dumps(np.ones(128, np.float32))
    with pytest.raises(UnsafePickle):
        safe_loads(data[:-5])


def test_allowed_globals_cannot_be_patched_by_build(tmp_path: Path) -> None:
    # GLOBAL numpy dtype, then BUILD with a slot-state dict that would setattr on the callable
    payload = b"\x80\x02cnumpy\ndtype\nN}X\x0c\x00\x00\x00__defaults__Ns\x86b."
    ops = [op.name for op, _, _ in pickletools.genops(payload)]
    assert ops[-2:] == ["BUILD", "STOP"]
    with pytest.raises(UnsafePickle, match=r"BUILD|attribute"):
        safe_loads(payload)
    assert safe_loads(pickle.dumps(np.ones(128), protocol=2)).shape == (128,)


def _seed_legacy(
    client: redis.Redis, layout: LegacyLayout, students: dict[str, list[bytes]]
) -> None:
    n = 0
    for sid, blobs in students.items():
        for blob in blobs:
            emb_id = f"e{n}"
            n += 1
            client.zadd(layout.face(sid), {emb_id: n})
            client.hset(layout.features, emb_id, blob)
            client.hset(layout.photos, emb_id, f"/photos/{sid}/{emb_id}.jpg")


def test_import_converts_good_rows_and_reports_bad_ones(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    layout = LegacyLayout(class_code="6B", period="2024-T1")
    rng = np.random.default_rng(0)
    good = {s: [rng.normal(size=128) for _ in range(3)] for s in ("ann", "bob")}
    marker = tmp_path / "pwned"
    _seed_legacy(
        redis_client,
        layout,
        {
            "ann": [pickle.dumps(v) for v in good["ann"]],
            "bob": [pickle.dumps(v) for v in good["bob"]] + [pickle.dumps(_Exploit(marker))],
            "cy": [pickle.dumps(np.zeros(64))],  # wrong dimension
        },
    )
    redis_client.zadd(layout.face("bob"), {"ghost": 99})  # id with no feature
    # another class/period must not leak in
    _seed_legacy(
        redis_client,
        LegacyLayout(class_code="6B", period="2023-T3"),
        {"old": [pickle.dumps(np.ones(128))]},
    )

    report = import_legacy(redis_client, layout, tenant="school-a", gallery="6B", meta=META)

    assert not marker.exists()
    assert (report.students, report.embeddings) == (2, 6)
    assert [r[0] for r in report.refused] == ["bob", "cy"]
    assert report.missing == [("bob", "ghost")]
    assert report.skipped_students == ["cy"]
    g = GalleryStore(redis_client, "school-a").load("6B", META)
    assert g.student_ids == ("ann", "bob")
    np.testing.assert_allclose(g.embeddings, np.vstack(good["ann"] + good["bob"]), rtol=1e-6)


def test_command_line_import(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = LegacyLayout(prefix="att", class_code="7A", period="p1")
    _seed_legacy(redis_client, layout, {"zoe": [pickle.dumps(np.ones(128))]})
    rc = main(
        [
            "--from-url",
            redis_url,
            "--prefix",
            "att",
            "--class-code",
            "7A",
            "--period",
            "p1",
            "--tenant",
            "school-a",
            "--gallery",
            "7a",
        ]
    )
    assert rc == 0
    assert '"students": 1' in capsys.readouterr().out
    assert GalleryStore(redis_client, "school-a").load("7a", META).student_ids == ("zoe",)
