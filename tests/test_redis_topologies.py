"""Every Redis operation of the job, the API and the operator on a real Redis Cluster (3 primaries,
a replica each) and on a real Sentinel group whose master is SIGKILLed while a job writes results.

Clients come from ``rollcall_contract.redisclient`` with the URL schemes the chart accepts, and
authenticate as the components' own ACL users (a per-school job user, the API, the operator).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis

from redisrig import free_port
from redistopo import Cluster, SentinelGroup
from redistopo_fixtures import TENANTS, Users
from rollcall_api.erasure import Eraser
from rollcall_api.errors import ApiError
from rollcall_api.store import Store
from rollcall_contract import keys, redisclient
from rollcall_contract.jobenv import ExitCode, JobSettings
from rollcall_contract.results import IncompleteResults, decode_results
from rollcall_job.__main__ import main
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.progress import redis_sink
from rollcall_job.results import read_results, write_results
from toyfaces import ToyEngine, photo, save

pytestmark = [pytest.mark.redis, pytest.mark.slow]

META = GalleryMeta("dlib-resnet-v1", 8, "euclidean")
CLASSES = [f"grade{g}-{s}" for g in range(5, 9) for s in "abc"]


def _embeddings(seed: int, n: int) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {
        f"s-{seed}-{i}": rng.standard_normal((2, META.dim)).astype(np.float32) for i in range(n)
    }


def _documents(uid: str, students: int = 40) -> dict[str, Any]:
    return {
        "summary": {"job": uid, "present": students},
        "attendance": {
            f"s-{i:03d}": {"status": "present", "score": i / 100} for i in range(students)
        },
        "photos": [{"path": f"p{i}.jpg", "faces": i % 5} for i in range(students)],
    }


# --- Cluster --------------------------------------------------------------------------------------


def test_cluster_keys_of_many_classes_spread_over_every_primary(
    redis_cluster_topology: Cluster,
) -> None:
    """Each gallery's hash/meta/packed share a slot, each job's results/staging/progress share a
    slot, and the classes and jobs of three schools land on all three primaries."""
    cluster = redis_cluster_topology
    gallery_ports, job_ports = set(), set()
    for tenant in TENANTS:
        for name in CLASSES:
            group = [
                f(tenant, name, META.model_id)
                for f in (keys.gallery, keys.gallery_meta, keys.gallery_packed)
            ]
            slots = {cluster.keyslot(k) for k in group}
            assert len(slots) == 1, group
            gallery_ports.add(cluster.port_of_slot(slots.pop()))
            uid = f"uid-{tenant}-{name}"
            group = [
                keys.job_results(tenant, uid),
                keys.job_results_staging(tenant, uid, "pod-1"),
                keys.job_progress(tenant, uid),
            ]
            slots = {cluster.keyslot(k) for k in group}
            assert len(slots) == 1, group
            job_ports.add(cluster.port_of_slot(slots.pop()))
    primaries = set(cluster.primaries().values())
    assert gallery_ports == primaries
    assert job_ports == primaries


def test_cluster_enrol_and_identify_read_galleries_on_every_shard(
    redis_cluster_topology: Cluster, topology_users: Users
) -> None:
    """The job's own GalleryStore (WATCH + MULTI/EXEC of hash, meta, packed) as each school's job
    user; the packed copy is on the shard of its gallery; identify's loads (roster or not) agree."""
    cluster = redis_cluster_topology
    used_ports = set()
    for t, tenant in enumerate(TENANTS):
        client = redisclient.sync_client(cluster.url(*topology_users.job(tenant)))
        store = GalleryStore(client, tenant)
        for c, name in enumerate(CLASSES):
            first, more = _embeddings(100 * t + c, 3), _embeddings(1000 + 100 * t + c, 2)
            store.put(name, META, first)
            store.put(name, META, more)  # WATCH/MULTI/EXEC again, reading the stored rows
            packed = keys.gallery_packed(tenant, name, META.model_id)
            port = cluster.port_of_slot(cluster.keyslot(packed))
            used_ports.add(port)
            with cluster.admin(port) as shard:
                assert shard.exists(packed) == 1  # on that primary itself, not redirected
            everyone = store.load(name, META)
            assert sorted(everyone.student_ids) == sorted([*first, *more])
            roster = [next(iter(more)), "s-not-enrolled"]
            some = store.load(name, META, roster)
            assert list(some.student_ids) == roster[:1] and list(some.missing) == roster[1:]
            np.testing.assert_array_equal(some.embeddings, more[roster[0]])
        client.close()
    assert used_ports == set(cluster.primaries().values())


def test_cluster_results_progress_idempotency_and_erasure(
    redis_cluster_topology: Cluster, topology_users: Users
) -> None:
    """Jobs publish results (staging + RENAME in one slot) and progress; the API reads both with
    its async cluster client, claims/releases idempotency keys (EVAL), and erases a student
    (SCAN over every primary, WATCH/MULTI/EXEC per gallery and per results hash)."""
    cluster = redis_cluster_topology
    tenant = TENANTS[0]
    job = redisclient.sync_client(cluster.url(*topology_users.job(tenant)))
    uids = [f"uid-{i}" for i in range(12)]
    for uid in uids:
        write_results(job, tenant, uid, "pod-0", _documents(uid), ttl_seconds=600, chunk_bytes=512)
        redis_sink(job, tenant, uid, 600)(7, 9)
        assert read_results(job, tenant, uid) == _documents(uid)
    store = GalleryStore(job, tenant)
    store.put("erase-me", META, _embeddings(1, 3) | {"s-000": np.ones((1, META.dim), np.float32)})
    result_ports = {
        cluster.port_of_slot(cluster.keyslot(keys.job_results(tenant, u))) for u in uids
    }
    assert len(result_ports) == 3

    async def api_side() -> None:
        api = redisclient.async_client(cluster.url(*topology_users.api()))
        operator = redisclient.async_client(cluster.url(*topology_users.operator()))
        try:
            store_ = Store(api)
            await store_.ping()
            for uid in uids:
                assert await store_.results(tenant, uid) == _documents(uid)
                assert await store_.progress(tenant, uid) == (7, 9)
            # the operator's progress loop: one non-transactional pipeline over many slots
            pipe = operator.pipeline(transaction=False)
            for uid in uids:
                pipe.hmget(keys.job_progress(tenant, uid), "done", "total")
            assert await pipe.execute() == [[b"7", b"9"]] * len(uids)
            claim = await store_.claim(tenant, "retry-1", "rj-1", "fp", 60)
            assert claim.won and await store_.holds(tenant, "retry-1", claim)
            again = await store_.claim(tenant, "retry-1", "rj-2", "fp2", 60)
            assert not again.won and again.name == "rj-1"
            await store_.release(tenant, "retry-1", claim)
            assert not await store_.holds(tenant, "retry-1", claim)
            eraser = Eraser(api)
            erased = await eraser.erase_student(tenant, "erase-me", "s-000")
            assert erased.class_found and erased.templates == 1
            # every results document names s-000 (attendance), on all three primaries
            assert erased.results == len(uids)
            for uid in uids:
                assert await store_.results(tenant, uid) is None
            whole = await eraser.erase_class(tenant, "erase-me")
            assert whole.templates == 3 and whole.models == [META.model_id]
        finally:
            await api.aclose()
            await operator.aclose()

    asyncio.run(api_side())
    assert store.meta("erase-me", META.model_id) is None
    admin = redisclient.sync_client(cluster.url(*topology_users.admin()))
    for key in (keys.gallery, keys.gallery_meta, keys.gallery_packed):
        assert admin.exists(key(tenant, "erase-me", META.model_id)) == 0
    admin.close()
    job.close()


def test_cluster_job_user_cannot_reach_another_school(
    redis_cluster_topology: Cluster, topology_users: Users
) -> None:
    """The per-school ACL holds on every shard: school A's job user is refused school B's keys."""
    cluster = redisclient.sync_client(redis_cluster_topology.url(*topology_users.job(TENANTS[0])))
    for uid in [f"uid-{i}" for i in range(6)]:  # keys on several shards
        with pytest.raises(redis.exceptions.NoPermissionError):
            cluster.hgetall(keys.job_results(TENANTS[1], uid))
    cluster.close()


# --- the job's own entry point -------------------------------------------------------------------


@pytest.fixture
def run_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``run_job(url, tenant, uid, mode, retry=None)``: the recognition container's ``main`` with a
    toy engine, enrolling ann/bob/cy or identifying a photo of ann and bob; ``retry``: its
    ``redis_retry_seconds`` (None: the default); returns (exit code, termination)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for sid in ("ann", "bob", "cy"):
        save(tmp_path / "enroll" / sid / "1.png", photo([(sid, 10, 10, 60)]))
    save(tmp_path / "in" / "1.png", photo([("ann", 10, 10, 40), ("bob", 100, 10, 40)]))

    def loader(settings: JobSettings, min_face_px: int) -> ToyEngine:
        return ToyEngine(min_face_px=min_face_px)

    def run(
        url: str, tenant: str, uid: str, mode: str, retry: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        if retry is None:
            monkeypatch.delenv("ROLLCALL_REDIS_RETRY_SECONDS", raising=False)
        else:
            monkeypatch.setenv("ROLLCALL_REDIS_RETRY_SECONDS", str(retry))
        env = {
            "ROLLCALL_JOB_NAMESPACE": tenant,
            "ROLLCALL_JOB_NAME": f"rj-{uid}",
            "ROLLCALL_JOB_UID": uid,
            "ROLLCALL_MODE": mode,
            "ROLLCALL_CLASS_CODE": "6B",
            "ROLLCALL_GALLERY": "6b",
            "ROLLCALL_ROSTER": json.dumps(["ann", "bob", "cy"]),
            "ROLLCALL_INPUT_DIR": str(tmp_path / ("enroll" if mode == "enroll" else "in")),
            "ROLLCALL_REDIS_URL": url,
            "ROLLCALL_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "ROLLCALL_PROGRESS_INTERVAL_SECONDS": "0",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        code = main([], engine_loader=loader)
        doc: dict[str, Any] = json.loads((tmp_path / "termination-log").read_text())
        return code, doc

    yield run
    root.handlers[:], root.level = handlers, level


def test_cluster_job_entrypoint_enrolls_and_identifies(
    redis_cluster_topology: Cluster, topology_users: Users, run_job: Any
) -> None:
    """``python -m rollcall_job`` itself, as school C's job user on a ``redis+cluster://`` URL."""
    tenant = TENANTS[2]
    url = redis_cluster_topology.url(*topology_users.job(tenant))
    code, term = run_job(url, tenant, "uid-enroll", "enroll")
    assert code == ExitCode.OK and term["summary"]["enrolled"] == 3
    code, term = run_job(url, tenant, "uid-identify", "identify")
    assert code == ExitCode.OK, term
    assert term["resultKey"] == keys.job_results(tenant, "uid-identify")
    client = redisclient.sync_client(url)
    results = read_results(client, tenant, "uid-identify")
    assert results is not None and results["attendance"]["absent"] == ["cy"]
    progress = client.hmget(keys.job_progress(tenant, "uid-identify"), ["done", "total"])
    assert progress == [b"1", b"1"]
    client.close()


# --- Sentinel -------------------------------------------------------------------------------------


class Reader(threading.Thread):
    """Polls the results key through its own sentinel client; records what a reader could see."""

    def __init__(self, url: str, tenant: str, uid: str) -> None:
        super().__init__(daemon=True)
        self.client = redisclient.sync_client(url, socket_timeout=2, socket_connect_timeout=1)
        self.key = keys.job_results(tenant, uid)
        self.seen: list[str] = []  # "none", "whole", "partial", per successful read
        self.documents: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                raw = cast(dict[bytes, bytes], self.client.hgetall(self.key))
            except redisclient.TRANSIENT_ERRORS:
                time.sleep(0.05)
                continue
            if not raw:
                self.seen.append("none")
                continue
            try:
                doc = decode_results({k.decode(): v.decode() for k, v in raw.items()})
            except IncompleteResults:
                self.seen.append("partial")
                continue
            self.seen.append("whole")
            if not self.documents or self.documents[-1] != doc:
                self.documents.append(doc)
        self.client.close()


@dataclass
class Failover:
    """What a job and a reader saw while a node was killed under them."""

    outcomes: list[str]  # per attempt: "published", "transient:<error>" or "other:<error>"
    reader: Reader
    # the first attempt's wait for the kill before its publish: [] when it failed while staging,
    # [True] when the kill released it, [False] when it gave up waiting (the kill never came)
    first_hold: list[bool]


def _publish_through_a_kill(
    url: str, admin_url: str, tenant: str, uid: str, documents: dict[str, Any], kill: Any
) -> Failover:
    """Run the job's results write (retried like the Job's backoff, one client per attempt as
    each pod is its own process) and call ``kill()`` once the first attempt is staging."""
    reader = Reader(url, tenant, uid)
    reader.start()
    outcomes: list[str] = []
    killed = threading.Event()
    held: list[bool] = []

    def hold_first_publish(attempt: int) -> Any:
        # the first attempt has staged everything: its RENAME waits for the kill, so the kill
        # always lands mid-write however fast this machine stages
        return (lambda: held.append(killed.wait(30))) if attempt == 0 else None

    def job() -> None:
        for attempt in range(30):
            client = redisclient.sync_client(url, socket_timeout=2, socket_connect_timeout=1)
            try:
                write_results(
                    client, tenant, uid, f"pod-{attempt}", documents,
                    ttl_seconds=600, chunk_bytes=64, replicas=redisclient.parse(url).replicas,
                    before_publish=hold_first_publish(attempt),
                )  # fmt: skip
                outcomes.append("published")
                return
            except redisclient.TRANSIENT_ERRORS as e:
                outcomes.append(f"transient:{type(e).__name__}")
                time.sleep(0.5)
            except Exception as e:  # anything else: the job would exit 1, not TRANSIENT
                outcomes.append(f"other:{type(e).__name__}:{e}")
                return
            finally:
                client.close()

    watcher = redisclient.sync_client(admin_url)
    staging = keys.job_results_staging(tenant, uid, "pod-0")
    writer = threading.Thread(target=job, daemon=True)
    writer.start()
    deadline = time.monotonic() + 30
    while not watcher.exists(staging):  # the job is writing: kill now
        assert time.monotonic() < deadline and writer.is_alive(), outcomes
        time.sleep(0.001)
    watcher.close()
    kill()
    killed.set()
    writer.join(120)
    time.sleep(0.5)  # the reader polls the new primary a little longer
    reader.stop.set()
    reader.join(10)
    return Failover(outcomes, reader, held)


def _assert_published_whole_once(seen: Failover, documents: dict[str, Any]) -> None:
    outcomes, reader = seen.outcomes, seen.reader
    assert outcomes and outcomes[-1] == "published", outcomes
    assert all(o.startswith("transient:") for o in outcomes[:-1]), outcomes
    # the kill lands while the first attempt stages, or while it waits to publish; it then fails
    # TRANSIENT, or its writes reach the promoted node (redis-py's cluster client re-routes a
    # command whose node died once the slot map shows the replica took the slot over)
    assert seen.first_hold in ([], [True]), f"the kill did not land mid-write: {seen.first_hold}"
    assert "partial" not in reader.seen
    assert reader.documents == [documents]  # whole, one version, exactly once
    first_whole = reader.seen.index("whole")
    assert set(reader.seen[first_whole:]) == {"whole"}  # once visible it stays visible


def test_sentinel_master_killed_while_a_job_writes_results(
    redis_sentinel_topology: SentinelGroup, topology_users: Users
) -> None:
    """SIGKILL the master while the job (its school's ACL user) is staging results: each attempt
    either publishes on the promoted master or fails with an error the job maps to TRANSIENT;
    retried like the Job's backoff, the results appear whole, exactly once, and no reader ever
    sees a half-written document."""
    group = redis_sentinel_topology
    tenant, uid = TENANTS[1], "uid-failover"
    url = group.url(*topology_users.job(tenant))
    documents = _documents(uid, students=400)
    killed: list[int] = []
    seen = _publish_through_a_kill(
        url, group.url(*topology_users.admin()), tenant, uid, documents,
        lambda: killed.append(group.kill_master()),
    )  # fmt: skip
    assert group.wait_promoted(killed[0]) != killed[0]
    _assert_published_whole_once(seen, documents)
    after = redisclient.sync_client(url)
    assert read_results(after, tenant, uid) == documents
    after.close()


def test_cluster_primary_killed_while_a_job_writes_results(
    redis_cluster_to_break: Cluster, topology_users: Users
) -> None:
    """The same on a cluster: SIGKILL the primary that owns the job's slot mid-write; its replica
    takes the slot over and the results still appear whole, once. With one replica per shard the
    promoted primary has none left to confirm a write, so this URL opts out (``replicas=0``);
    with the default the job would exit TRANSIENT until the lost node is back."""
    cluster = redis_cluster_to_break
    tenant, uid = TENANTS[2], "uid-cluster-failover"
    url = cluster.url(*topology_users.job(tenant)) + "?replicas=0"
    slot = cluster.keyslot(keys.job_results(tenant, uid))
    owner = cluster.port_of_slot(slot)
    documents = _documents(uid, students=400)
    seen = _publish_through_a_kill(
        url, cluster.url(*topology_users.admin()), tenant, uid, documents,
        lambda: cluster.kill(owner),
    )  # fmt: skip
    assert cluster.port_of_slot(slot) != owner
    _assert_published_whole_once(seen, documents)
    after = redisclient.sync_client(url)
    assert read_results(after, tenant, uid) == documents
    after.close()


def test_sentinel_job_entrypoint_exits_transient_or_finishes_across_a_failover(
    redis_sentinel_topology: SentinelGroup, topology_users: Users, run_job: Any
) -> None:
    """The job's ``main`` on a ``redis+sentinel://`` URL: right after the master is killed it exits
    TRANSIENT (the Job retries it) or, if the promotion came first, finishes; retried like the
    Job's backoff until the sentinels agree on the promoted master, it finishes with whole results."""
    group = redis_sentinel_topology
    tenant = TENANTS[0]
    url = group.url(*topology_users.job(tenant))
    code, term = run_job(url, tenant, "uid-enroll", "enroll")
    assert code == ExitCode.OK, term
    # the enrolment is on every replica before the kill (WAIT), so the promoted one has the gallery
    admin = redisclient.sync_client(group.url(*topology_users.admin()))
    wait = admin.execute_command("WAIT", len(group.replicas), 10_000)  # type: ignore[no-untyped-call]
    assert wait == len(group.replicas)
    admin.close()
    group.kill_master()
    codes = []
    for _ in range(30):
        code, term = run_job(url, tenant, "uid-identify", "identify")
        codes.append(code)
        if code != ExitCode.TRANSIENT:
            break
        assert term["reason"] == "Transient"
        assert topology_users.job(tenant)[1] not in term["error"] and ":***@" in term["error"]
        time.sleep(0.5)
    assert codes[-1] == ExitCode.OK, (codes, term)
    assert set(codes[:-1]) <= {ExitCode.TRANSIENT}
    client = redisclient.sync_client(url)
    results = read_results(client, tenant, "uid-identify")
    assert results is not None and results["attendance"]["absent"] == ["cy"]
    client.close()


def test_results_count_as_written_only_once_a_replica_holds_them(
    redis_sentinel_topology: SentinelGroup, topology_users: Users
) -> None:
    """Replication is asynchronous: with the replicas gone, the master still takes the publish, but
    the job's WAIT sees no replica confirm it and raises NotReplicated (TRANSIENT: the Job retries
    and publishes again) instead of reporting a result a failover could lose."""
    group = redis_sentinel_topology
    tenant = TENANTS[1]
    url = group.url(*topology_users.job(tenant))
    wanted = redisclient.parse(url).replicas
    assert wanted == 1  # the default for a Sentinel (and Cluster) URL
    client = redisclient.sync_client(url)
    write_results(client, tenant, "uid-ok", "pod-0", _documents("uid-ok"), ttl_seconds=60,
                  replicas=len(group.replicas))  # fmt: skip
    for replica in group.replicas:
        replica.process.kill()
        replica.process.wait()
    with pytest.raises(redisclient.NotReplicated) as info:
        write_results(client, tenant, "uid-lone", "pod-0", _documents("uid-lone"),
                      ttl_seconds=60, replicas=wanted)  # fmt: skip
    assert isinstance(info.value, redisclient.TRANSIENT_ERRORS)
    assert read_results(client, tenant, "uid-lone") == _documents("uid-lone")  # on the master only
    client.close()


def test_cluster_results_wait_on_the_primary_of_their_own_slot(
    redis_cluster_topology: Cluster, topology_users: Users
) -> None:
    """On a cluster WAIT goes to the primary owning the results key (a keyless command would go
    to any node): each publish, on every shard, is confirmed by that shard's replica."""
    cluster = redis_cluster_topology
    tenant = TENANTS[1]
    client = redisclient.sync_client(cluster.url(*topology_users.job(tenant)))
    ports = set()
    for uid in [f"uid-wait-{i}" for i in range(12)]:
        key = write_results(client, tenant, uid, "pod-0", _documents(uid), ttl_seconds=60,
                            replicas=1)  # fmt: skip
        ports.add(cluster.port_of_slot(cluster.keyslot(key)))
    assert ports == set(cluster.primaries().values())
    with pytest.raises(redisclient.NotReplicated):  # each shard has one replica, not two
        redisclient.confirm_on(client, keys.job_results_wait(tenant, "uid-wait-0"), 2, 200)
    client.close()


def test_an_unreachable_cluster_is_unavailable_not_a_crash(run_job: Any) -> None:
    """redis-py raises RedisClusterException (not a RedisError) when no cluster node answers: the
    API still answers 503 and the job still exits TRANSIENT."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"

    async def api_side() -> None:
        client = redisclient.async_client(url, socket_connect_timeout=1)
        with pytest.raises(ApiError) as info:
            await Store(client).ping()
        assert info.value.status == 503
        with pytest.raises(ApiError) as info:
            await Eraser(client).erase_class(TENANTS[0], "6b")
        assert info.value.status == 503
        await client.aclose()

    asyncio.run(api_side())
    code, term = run_job(url, TENANTS[0], "uid-nowhere", "identify")
    assert code == ExitCode.TRANSIENT and term["reason"] == "Transient", term
