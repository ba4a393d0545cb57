"""An erase answers 200 only once the Redis primary's replicas hold it (``WAIT``), else 503.

Real servers only: a primary and a replica (two ``redis-server`` processes with the components'
ACL users), the replica replicating through a relay the test can hold (what the primary sends
waits in the relay, undelivered, like a slow network) and cut (what it held is lost, like a
primary that dies before its replica got the write). The API runs in-process against them and the
real apiserver (each erase records an Event). Pure rules and the chart's values come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import redis
from pydantic import ValidationError

from apirig import write_key_file
from helmchart import env_of, one, render
from replicarig import Pair, replica_pair, stopped, until
from rollcall_api.app import create_app
from rollcall_api.erasure import (
    ALL_REPLICAS,
    CLASS_WIDE,
    INTERRUPTED_MESSAGE,
    MARKER_FRESH_SECONDS,
    Eraser,
    Erasure,
    Expect,
    Marker,
    connected_replicas,
    unconfirmed_key,
    unconfirmed_message,
    wanted_replicas,
)
from rollcall_api.errors import ApiError
from rollcall_api.settings import Settings
from rollcall_contract import acl, keys, redisclient
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.results import read_results, write_results

MODELS = (
    GalleryMeta("dlib-resnet-v1", 4, "euclidean"),
    GalleryMeta("mobilefacenet-v1", 3, "cosine"),
)
CLASS = "7B"
STUDENT = "s-001"

# --- pure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "connected", "wanted"),
    [
        (ALL_REPLICAS, 0, 0),  # no replicas: nothing to wait for, answered as before
        (ALL_REPLICAS, 2, 2),
        (0, 2, 0),  # opted out
        (1, 2, 1),
        (2, 1, 2),  # more asked than connected: kept, so the erase is not confirmed
    ],
)
def test_how_many_replicas_an_erase_waits_for(
    setting: int | Literal["all"], connected: int, wanted: int
) -> None:
    assert wanted_replicas(setting, connected) == wanted


@pytest.mark.parametrize(
    ("info", "connected"),
    [
        ({"role": "master", "connected_slaves": 2}, 2),
        ({"role": "master"}, 0),
        ("role:master", 0),
    ],
)
def test_connected_replicas_read_from_info(info: object, connected: int) -> None:
    assert connected_replicas(info) == connected


def test_the_503_message_says_what_happened_and_that_repeating_is_safe() -> None:
    text = unconfirmed_message(0, 2)
    assert text.startswith("erased on the primary, not yet confirmed by 2 of 2 replicas")
    assert "repeat the same DELETE, it is idempotent" in text


_COUNTS = '"models": [], "templates": 0, "results": 0, "class_found": false'


@pytest.mark.parametrize(
    "value",
    [
        "",
        "{",
        "[]",
        '{"models": 1}',
        '{"models": [], "templates": "x", "results": 0}',
        f"{{{_COUNTS}}}",  # a marker written before markers had a time: ignored
        f'{{{_COUNTS}, "at_ms": 1, "slots": ["x"]}}',
    ],
)
def test_a_marker_that_is_not_one_is_ignored(value: str) -> None:
    assert Marker.parse(value) is None


def test_a_marker_holds_counts_model_ids_a_time_and_slots_only() -> None:
    done = Erasure(models=["m1", "m2"], templates=2, results=1, class_found=True)
    marker = Marker(done, 1_700_000_000_000, (12, 9000))
    assert Marker.parse(marker.value()) == marker
    assert set(Erasure.__dataclass_fields__) == {"models", "templates", "results", "class_found"}
    assert set(Marker.__dataclass_fields__) == {"erasure", "at_ms", "slots"}
    assert unconfirmed_key("north", CLASS).startswith(keys.erased("north", CLASS))


@pytest.mark.parametrize(
    ("env", "replicas"),
    [
        ({}, "all"),
        ({"ROLLCALL_API_ERASE_REPLICAS": "0"}, 0),
        ({"ROLLCALL_API_ERASE_REPLICAS": "3"}, 3),
    ],
)
def test_settings_read_the_replicas_an_erase_waits_for(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], replicas: int | str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.erase_replicas, settings.erase_replica_timeout_ms) == (replicas, 2000)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROLLCALL_API_ERASE_REPLICAS", "-1"),
        ("ROLLCALL_API_ERASE_REPLICAS", "some"),
        ("ROLLCALL_API_ERASE_REPLICA_TIMEOUT_MS", "0"),  # WAIT's 0 blocks forever
        ("ROLLCALL_API_ERASE_REPLICA_TIMEOUT_MS", "5000"),  # past the 5 s socket timeout
    ],
)
def test_settings_refuse_what_waits_forever_or_means_nothing(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def _api_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container = one(docs, "Deployment", "rc-rollcall-api")["spec"]["template"]["spec"]
    return env_of(container["containers"][0])


def test_chart_values_reach_the_api_settings(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _api_env(render(tools_bin, tmp_path))
    assert default["ROLLCALL_API_ERASE_REPLICAS"] == "all"
    assert default["ROLLCALL_API_ERASE_REPLICA_TIMEOUT_MS"] == "2000"
    values = {"api": {"erasure": {"replicas": 1, "replicaTimeoutMs": 800}}}
    env = _api_env(render(tools_bin, tmp_path, values))
    for name in ("ROLLCALL_API_ERASE_REPLICAS", "ROLLCALL_API_ERASE_REPLICA_TIMEOUT_MS"):
        monkeypatch.setenv(name, env[name])
    assert (Settings().erase_replicas, Settings().erase_replica_timeout_ms) == (1, 800)


@pytest.mark.parametrize(
    "erasure",
    [{"replicas": -1}, {"replicas": "some"}, {"replicaTimeoutMs": 0}, {"replicaTimeoutMs": 5000}],
)
def test_chart_refuses_erasure_values_the_api_would_refuse(
    tools_bin: Path, tmp_path: Path, erasure: dict[str, Any]
) -> None:
    with pytest.raises(AssertionError, match="schema"):
        render(tools_bin, tmp_path, {"api": {"erasure": erasure}})


@pytest.mark.parametrize(
    ("expect", "reply", "holds"),
    [
        (Expect("erased", "s-1", present=True), 1, True),  # the tombstone is there
        (Expect("erased", "s-1", present=True), 0, False),  # a primary that missed the erase
        (Expect("gallery", "s-1"), 0, True),  # the template is gone
        (Expect("gallery", "s-1"), 1, False),
        (Expect("results"), 0, True),  # a deleted result: no key (HLEN 0)
        (Expect("results"), 3, False),
    ],
)
def test_what_a_primary_holding_the_erase_shows(expect: Expect, reply: int, holds: bool) -> None:
    assert expect.holds(reply) is holds


def test_the_reads_an_erase_is_checked_with() -> None:
    assert Expect("erased", "s-1", present=True).command() == ("HEXISTS", "erased", "s-1")
    assert Expect("results").command() == ("HLEN", "results")


# --- a primary and a replica behind a relay ------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """A primary and one replica behind a relay (tests/replicarig.py)."""
    with replica_pair(tmp_path) as rig:
        yield rig


@dataclass
class Api:
    http: httpx.AsyncClient
    key: str
    namespace: str

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers={"Authorization": f"Bearer {self.key}"})


ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture
def api(tmp_path: Path, kubeconfig: Path, namespace: str, pair: Pair) -> ApiFactory:
    """The API as the API's Redis user against the pair's primary, with the given settings."""

    @contextlib.asynccontextmanager
    async def start(**settings: Any) -> AsyncIterator[Api]:
        issued = write_key_file(tmp_path / "keys.yaml", {"north": [namespace]})
        app = create_app(
            Settings(
                kubeconfig=kubeconfig,
                keys_file=tmp_path / "keys.yaml",
                redis_url=pair.url(acl.API_USER),
                keys_reload_seconds=0,
                **settings,
            )
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                yield Api(http, issued["north"], namespace)

    return start


STUDENT_PATH = f"/v1/classes/{CLASS}/students/{STUDENT}"
CLASS_PATH = f"/v1/classes/{CLASS}/gallery"


def _enrol(pair: Pair, tenant: str) -> None:
    """Two models' galleries and a result naming the student, on the primary and the replica."""
    with pair.admin(pair.primary) as admin:
        store = GalleryStore(admin, tenant)
        for meta in MODELS:
            store.put(CLASS, meta, {s: [[0.5] * meta.dim] for s in (STUDENT, "s-002")})
        doc = {"attendance": {"present": [{"student": STUDENT}]}}
        write_results(admin, tenant, "uid-1", "1", doc, ttl_seconds=600)
    with pair.admin(pair.replica) as replica:
        until("the replica to hold the enrolment", lambda: _holds(replica, tenant) == (2, False))


def _holds(r: redis.Redis, tenant: str, student: str = STUDENT) -> tuple[int, bool]:
    """(models whose gallery still has the student's template, tombstone of the student present)."""
    templates = sum(
        bool(r.hexists(keys.gallery(tenant, CLASS, m.model_id), student)) for m in MODELS
    )
    return templates, bool(r.hexists(keys.erased(tenant, CLASS), student))


async def test_an_erase_answers_only_once_the_replica_holds_it(pair: Pair, api: ApiFactory) -> None:
    async with api() as north:
        _enrol(pair, north.namespace)
        pair.relay.hold()
        asyncio.get_running_loop().call_later(0.8, pair.relay.release)
        pending = asyncio.create_task(north.delete(STUDENT_PATH))
        await asyncio.sleep(0.5)
        assert not pending.done()  # the replica has not got the erase: no answer yet
        resp = await pending
        assert resp.status_code == 200, resp.text
        assert (resp.json()["templates"], resp.json()["results"]) == (2, 1)
        with pair.admin(pair.replica) as replica:  # read at once, on the replica itself
            assert _holds(replica, north.namespace) == (0, True)
            assert replica.exists(keys.job_results(north.namespace, "uid-1")) == 0


async def test_an_unconfirmed_erase_is_a_503_and_the_same_delete_later_a_200(
    pair: Pair, api: ApiFactory
) -> None:
    async with api(erase_replica_timeout_ms=500) as north:
        _enrol(pair, north.namespace)
        with stopped(pair.replica):
            began = time.monotonic()
            resp = await north.delete(STUDENT_PATH)
            took = time.monotonic() - began
        assert resp.status_code == 503, resp.text
        assert resp.headers["Retry-After"] == "1"
        error = resp.json()["error"]
        assert error["code"] == "erase_unconfirmed"
        assert error["message"] == unconfirmed_message(0, 1)
        assert took >= 0.5  # WAIT used its timeout; erase_unconfirmed shows it gave up (no hang)
        with pair.admin(pair.primary) as primary:  # applied on the primary, not confirmed
            assert _holds(primary, north.namespace) == (0, True)
            assert read_results(primary, north.namespace, "uid-1") is None

        again = await north.delete(STUDENT_PATH)  # the replica runs again
        assert again.status_code == 200, again.text
        assert (again.json()["templates"], again.json()["results"]) == (2, 1)  # the first's counts
        with pair.admin(pair.replica) as replica:
            assert _holds(replica, north.namespace) == (0, True)
        assert (await north.delete(STUDENT_PATH)).status_code == 404  # confirmed: erased is erased


async def test_a_class_erase_unconfirmed_then_confirmed(pair: Pair, api: ApiFactory) -> None:
    async with api(erase_replica_timeout_ms=300) as north:
        _enrol(pair, north.namespace)
        with stopped(pair.replica):
            first = await north.delete(CLASS_PATH)
        assert first.status_code == 503 and first.headers["Retry-After"] == "1", first.text
        again = await north.delete(CLASS_PATH)
        assert again.status_code == 200, again.text
        assert (again.json()["templates"], len(again.json()["models"])) == (4, 2)
        with pair.admin(pair.replica) as replica:
            assert _holds(replica, north.namespace, CLASS_WIDE)[1]
            assert _holds(replica, north.namespace, "s-002")[0] == 0
        assert (await north.delete(CLASS_PATH)).status_code == 404


async def test_more_replicas_asked_for_than_connected_is_never_a_200(
    pair: Pair, api: ApiFactory
) -> None:
    async with api(erase_replicas=2, erase_replica_timeout_ms=200) as north:
        _enrol(pair, north.namespace)
        resp = await north.delete(STUDENT_PATH)
        assert resp.status_code == 503
        assert resp.json()["error"]["message"] == unconfirmed_message(1, 2)


async def test_replicas_zero_does_not_wait(pair: Pair, api: ApiFactory) -> None:
    async with api(erase_replicas=0) as north:
        _enrol(pair, north.namespace)
        with stopped(pair.replica):
            resp = await asyncio.wait_for(north.delete(STUDENT_PATH), 1.5)
        assert resp.status_code == 200, resp.text


async def test_a_replica_promoted_right_after_a_200_has_no_template(
    pair: Pair, api: ApiFactory
) -> None:
    """The primary dies at once after the 200, its link cut with whatever it still held, and the
    replica is promoted (REPLICAOF NO ONE, what Sentinel sends): the erase is there."""
    async with api() as north:
        _enrol(pair, north.namespace)
        pair.relay.hold()
        asyncio.get_running_loop().call_later(0.5, pair.relay.release)
        resp = await north.delete(STUDENT_PATH)
        pair.relay.cut()
        pair.primary.process.kill()
        assert resp.status_code == 200, resp.text
        with pair.admin(pair.replica) as promoted:
            promoted.execute_command("REPLICAOF", "NO", "ONE")
            assert promoted.execute_command("ROLE")[0] == b"master"
            assert _holds(promoted, north.namespace) == (0, True)


async def test_an_old_unconfirmed_marker_no_longer_answers_a_found_nothing_erase(
    pair: Pair, api: ApiFactory
) -> None:
    """An erase answered 503 and not repeated within MARKER_FRESH_SECONDS: a later erase that
    finds nothing is a 404 (not a 200 with the old counts), and drops the old marker."""
    async with api(erase_replica_timeout_ms=300) as north:
        _enrol(pair, north.namespace)
        with stopped(pair.replica):
            assert (await north.delete(STUDENT_PATH)).status_code == 503
        marker = unconfirmed_key(north.namespace, CLASS)
        with pair.admin(pair.primary) as primary:
            value = json.loads(primary.hget(marker, STUDENT) or b"")
            value["at_ms"] = int(time.time() * 1000) - (MARKER_FRESH_SECONDS + 60) * 1000
            primary.hset(marker, STUDENT, json.dumps(value))
        resp = await north.delete(STUDENT_PATH)
        assert resp.status_code == 404, resp.text
        with pair.admin(pair.primary) as primary:
            assert not primary.hexists(marker, STUDENT)


@pytest.mark.parametrize("erased", [True, False], ids=["holds-the-erase", "missed-the-erase"])
async def test_a_primary_is_confirmed_only_if_it_shows_the_erase(pair: Pair, erased: bool) -> None:
    """What the API meets when a failover lands between an erase's writes and its confirmation:
    the confirmation pipeline runs on a primary (with a replica that acknowledges) that never got
    the writes. WAIT alone would say 200; the reads in the same pipeline say the erase is not
    there: 503 ``erase_interrupted``, and the marker keeps the counts for the repeat. The control
    runs the same confirmation on a primary that holds the erase: 200."""
    namespace = "t-confirm"  # a tenant: Redis only here
    _enrol(pair, namespace)
    with pair.admin(pair.primary) as primary:
        if erased:  # what the erase's writes leave
            for meta in MODELS:
                primary.hdel(keys.gallery(namespace, CLASS, meta.model_id), STUDENT)
            primary.hset(keys.erased(namespace, CLASS), STUDENT, keys.tombstone(0))
            primary.delete(keys.job_results(namespace, "uid-1"))
    expects = [Expect(keys.erased(namespace, CLASS), STUDENT, present=True)]
    expects += [Expect(keys.gallery(namespace, CLASS, m.model_id), STUDENT) for m in MODELS]
    expects.append(Expect(keys.job_results(namespace, "uid-1")))
    counts = Erasure(models=[m.model_id for m in MODELS], templates=2, results=1)
    client = redisclient.async_client(pair.url(acl.API_USER))
    try:
        eraser = Eraser(client)
        if erased:
            assert await eraser.confirm(namespace, CLASS, STUDENT, counts, expects) == counts
            return
        with pytest.raises(ApiError) as info:
            await eraser.confirm(namespace, CLASS, STUDENT, counts, expects)
        assert (info.value.status, info.value.code) == (503, "erase_interrupted")
        assert info.value.message == INTERRUPTED_MESSAGE
        marker = await client.hget(unconfirmed_key(namespace, CLASS), STUDENT)
        assert isinstance(marker, bytes) and Marker.parse(marker.decode()) is not None
    finally:
        await client.aclose()
