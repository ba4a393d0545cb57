"""Moving pre-tenant galleries under a school's namespace (``python -m rollcall_job.migrate``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from rollcall_contract import keys
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.migrate import main, model_id_of, plan

pytestmark = pytest.mark.redis

DLIB = GalleryMeta("dlib-resnet-v1", 4, "euclidean")
MFN = GalleryMeta("mobilefacenet-sirius-v1", 3, "cosine")


def _legacy(client: redis.Redis, name: str, meta: GalleryMeta, students: list[str]) -> None:
    """A gallery in the old layout, byte for byte what the old writer left (same codec)."""
    rows = {s: np.full((1, meta.dim), i + 1, np.float32) for i, s in enumerate(students)}
    GalleryStore(client, "scratch").put(name, meta, rows)
    for kind in ("", ":meta", ":packed"):
        old = keys.gallery("scratch", name, meta.model_id) + kind
        client.rename(old, keys.legacy_gallery(name, meta.model_id) + kind)


def test_plan_maps_each_old_key_onto_the_tenant_key_of_the_same_hash_tag() -> None:
    (move,) = plan("school-a", "7b", ["m1", "m1"])
    assert move.pairs == (
        ("rollcall:gallery:{7b:m1}", "rollcall:school-a:gallery:{7b:m1}"),
        ("rollcall:gallery:{7b:m1}:meta", "rollcall:school-a:gallery:{7b:m1}:meta"),
        ("rollcall:gallery:{7b:m1}:packed", "rollcall:school-a:gallery:{7b:m1}:packed"),
    )
    for src, dst in move.pairs:
        assert src[src.index("{") : src.index("}")] == dst[dst.index("{") : dst.index("}")]
    with pytest.raises(ValueError):
        plan("School A", "7b", ["m1"])


@pytest.mark.parametrize(
    ("key", "name", "model"),
    [
        ("rollcall:gallery:{7b:dlib-resnet-v1}", "7b", "dlib-resnet-v1"),
        ("rollcall:gallery:{7b:m.2}", "7b", "m.2"),
        ("rollcall:gallery:{7bb:m}", "7b", None),
        ("rollcall:school-a:gallery:{7b:m}", "7b", None),
        ("rollcall:gallery:{7b:m}:meta", "7b", None),
    ],
)
def test_model_id_of(key: str, name: str, model: str | None) -> None:
    if model is None:
        with pytest.raises(ValueError):
            model_id_of(key, name)
    else:
        assert model_id_of(key, name) == model


def test_all_models_move_whole_and_load_under_the_tenant(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _legacy(redis_client, "grade7-b", DLIB, ["ann", "bob"])
    _legacy(redis_client, "grade7-b", MFN, ["ann"])
    _legacy(redis_client, "grade7-bb", DLIB, ["zoe"])  # another class: must stay where it is
    argv = ["--url", redis_url, "--tenant", "school-a", "--gallery", "grade7-b", "--all-models"]

    assert main([*argv, "--dry-run"]) == 0
    assert redis_client.exists(keys.legacy_gallery("grade7-b", DLIB.model_id))
    capsys.readouterr()

    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"moved": sorted([DLIB.model_id, MFN.model_id]), "refused": [], "missing": []}
    store = GalleryStore(redis_client, "school-a")
    # the packed copy moved with its meta stamp: loads in one round trip, same rows
    assert store.load("grade7-b", DLIB).student_ids == ("ann", "bob")
    assert store.load("grade7-b", MFN).student_ids == ("ann",)
    old = [k.decode() for k in redis_client.scan_iter(match="rollcall:gallery:*")]
    assert sorted(old) == sorted(
        keys.legacy_gallery("grade7-bb", DLIB.model_id) + kind for kind in ("", ":meta", ":packed")
    )
    assert main(argv) == 1  # nothing left to move


def test_an_existing_tenant_gallery_is_never_overwritten(
    redis_client: redis.Redis, redis_url: str
) -> None:
    _legacy(redis_client, "grade7-b", DLIB, ["old-1"])
    _legacy(redis_client, "grade7-b", MFN, ["old-2"])
    GalleryStore(redis_client, "school-a").put(
        "grade7-b", DLIB, {"new": np.zeros((1, 4), np.float32)}
    )
    before = redis_client.dump(keys.gallery("school-a", "grade7-b", DLIB.model_id))

    rc = main(["--url", redis_url, "--tenant", "school-a", "--gallery", "grade7-b", "--all-models"])

    assert rc == 2
    assert redis_client.dump(keys.gallery("school-a", "grade7-b", DLIB.model_id)) == before
    assert redis_client.exists(keys.legacy_gallery("grade7-b", DLIB.model_id))  # left for a human
    # the other model had no tenant gallery: it moved, whole
    assert GalleryStore(redis_client, "school-a").load("grade7-b", MFN).student_ids == ("old-2",)


@pytest.mark.parametrize(
    "argv",
    [
        ["--tenant", "School_A", "--gallery", "7b", "--all-models"],
        ["--tenant", "school-a", "--gallery", "7b:x", "--all-models"],
        ["--tenant", "school-a", "--gallery", "7b"],  # neither --model-id nor --all-models
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], redis_url: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--url", redis_url, *argv])
    assert exc.value.code == 2


def test_a_named_model_with_no_legacy_gallery_is_reported_missing(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--tenant", "school-a", "--gallery", "7b", "--model-id", "dlib-resnet-v1"]
    assert main(["--url", redis_url, *argv]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == ["dlib-resnet-v1"]
