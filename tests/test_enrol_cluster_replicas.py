"""On Redis Cluster an enrolment counts as done only once the replicas of the gallery's primary
hold it, not only those of the results' primary.

The job WAITs for the replicas after its results publish, on the results key's primary (slot
``{<uid>}``); its gallery writes (``GalleryStore.put`` and the erase-while-running ``withdraw``,
slot ``{<class>:<model>}``) usually sit on another primary, whose replicas that WAIT does not
count. Real servers only: the Cluster rig of hack/redistopo.py (3 primaries, a replica each, the
components' ACL users), the job's own ``main``/``run`` with the toy engine as school C's job user.
Only the gallery primary's replica is SIGSTOPped (connected, confirming nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from redistopo import Cluster
from redistopo_fixtures import TENANTS, Users
from replicarig import replica_pair, stopped
from rollcall_contract import keys, redisclient
from rollcall_contract.jobenv import ExitCode, JobSettings
from rollcall_job.__main__ import run
from rollcall_job.gallery import GalleryStore
from rollcall_job.pipeline import embedder_spec
from rollcall_job.results import read_results
from test_erase_cluster_replicas import _replica_pid, _replica_port, _stopped
from test_redis_topologies import run_job  # noqa: F401  (fixture used by name)
from toyfaces import ToyEngine, photo, save

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TENANT = TENANTS[2]
GALLERY = "6b"  # run_job's gallery
MODEL = embedder_spec(ToyEngine().embedder_card).meta.model_id
STUDENTS = {"ann", "bob", "cy"}


def _port(cluster: Cluster, key: str) -> int:
    return cluster.port_of_slot(cluster.keyslot(key))


def _uid(cluster: Cluster, *, same_primary: bool, prefix: str) -> str:
    """A job uid whose results sit on the gallery's primary, or on another one."""
    home = _port(cluster, keys.gallery(TENANT, GALLERY, MODEL))
    for n in range(200):
        uid = f"{prefix}-{n}"
        if (_port(cluster, keys.job_results(TENANT, uid)) == home) is same_primary:
            return uid
    raise AssertionError("no uid lands there")


def _students(client: redis.Redis, key: str) -> set[str]:
    """The student ids a gallery hash holds."""
    return {k.decode() for k in cast(list[bytes], client.hkeys(key))}


def _on_replica(cluster: Cluster, key: str) -> set[str]:
    """The gallery's students as the replica of its primary holds them (READONLY)."""
    with cluster.admin(_replica_port(cluster, _port(cluster, key))) as replica:
        replica.execute_command("READONLY")
        return _students(replica, key)


def test_an_enrolment_waits_for_the_replica_of_the_gallerys_primary(
    redis_cluster_topology: Cluster,
    topology_users: Users,
    run_job: Any,  # noqa: F811
) -> None:
    """The gallery's replica stopped, the results' running, no retries inside the job: it exits
    TRANSIENT (NotReplicated) after the WAIT's timeout and publishes nothing; resumed, the retried
    job (a re-enrolment of the same photos) succeeds and that replica holds the whole gallery."""
    cluster = redis_cluster_topology
    url = cluster.url(*topology_users.job(TENANT))
    uid = _uid(cluster, same_primary=False, prefix="uid-enrol-wait")
    gallery = keys.gallery(TENANT, GALLERY, MODEL)
    client = redisclient.sync_client(cluster.url(*topology_users.admin()))
    try:
        with _stopped(_replica_pid(cluster, _port(cluster, gallery))):
            code, term = run_job(url, TENANT, uid, "enroll", retry=0)
        assert code == ExitCode.TRANSIENT, term
        # NotReplicated: WAIT gave up after its timeout (2 s); a blocked WAIT would be a timeout
        assert term["reason"] == "Transient" and "NotReplicated" in term["error"], term
        assert read_results(client, TENANT, uid) is None  # no result ahead of the replicas
        assert _students(client, gallery) == STUDENTS  # on the primary, unconfirmed
        written = client.hgetall(gallery)

        code, term = run_job(url, TENANT, uid, "enroll")
        assert code == ExitCode.OK, term
        assert term["summary"]["enrolled"] == 3 and term["summary"]["erased_while_running"] == 0
        assert client.hgetall(gallery) == written  # the same templates again: idempotent
        assert _on_replica(cluster, gallery) == STUDENTS
        results = read_results(client, TENANT, uid)
        assert results is not None and set(results["students"]) == STUDENTS
    finally:
        client.close()


class _ResumeOnRetry(logging.Handler):
    """SIGCONTs a stopped process at the job's first retry notice (``rollcall_job.writeretry``)."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.phases: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.phases.append(f"{getattr(record, 'phase', None)}:{getattr(record, 'error', None)}")
        os.kill(self.pid, signal.SIGCONT)


def test_an_unconfirmed_enrolment_is_written_again_inside_the_job(
    redis_cluster_topology: Cluster,
    topology_users: Users,
    run_job: Any,  # noqa: F811
) -> None:
    """The same stopped replica with the job's default retries: the first confirmation fails
    (NotReplicated), the job's retry notice resumes the replica, and the enrolment phase run
    again finishes in the same process: exit 0, the replica holds the whole gallery."""
    cluster = redis_cluster_topology
    url = cluster.url(*topology_users.job(TENANT))
    uid = _uid(cluster, same_primary=False, prefix="uid-enrol-again")
    gallery = keys.gallery(TENANT, GALLERY, MODEL)
    resume = _ResumeOnRetry(_replica_pid(cluster, _port(cluster, gallery)))
    notices = logging.getLogger("rollcall_job.writeretry")
    notices.addHandler(resume)
    client = redisclient.sync_client(cluster.url(*topology_users.admin()))
    try:
        with _stopped(resume.pid):
            code, term = run_job(url, TENANT, uid, "enroll")
        assert code == ExitCode.OK, term
        assert resume.phases == ["enrol:NotReplicated"]
        assert term["summary"]["enrolled"] == 3 and term["summary"]["erased_while_running"] == 0
        assert _on_replica(cluster, gallery) == STUDENTS
        results = read_results(client, TENANT, uid)
        assert results is not None and set(results["students"]) == STUDENTS
    finally:
        notices.removeHandler(resume)
        client.close()


def test_a_gallery_on_the_results_primary_costs_no_second_wait(
    redis_cluster_topology: Cluster,
    topology_users: Users,
    run_job: Any,  # noqa: F811
) -> None:
    """Gallery and results on one primary: the results' WAIT (after the put, on that primary's
    one replication log) covers the put, so the job writes no wait key of its own."""
    cluster = redis_cluster_topology
    url = cluster.url(*topology_users.job(TENANT))
    uid = _uid(cluster, same_primary=True, prefix="uid-enrol-same")
    home = _port(cluster, keys.gallery(TENANT, GALLERY, MODEL))
    with cluster.admin(home) as primary:
        wait_key = GalleryStore(primary, TENANT).wait_key(GALLERY, MODEL)
        primary.delete(wait_key)  # an earlier test's, on the same gallery
    code, term = run_job(url, TENANT, uid, "enroll")
    assert code == ExitCode.OK, term
    with cluster.admin(home) as primary:
        assert primary.exists(wait_key) == 0


def test_a_withdraw_after_the_publish_waits_for_the_gallerys_replica(
    redis_cluster_topology: Cluster, topology_users: Users, tmp_path: Path
) -> None:
    """ann is erased after the put (a tombstone, the erase found nothing yet) and the gallery's
    replica stops just before the publish: the job republishes without ann and withdraws ann's
    template from the gallery, a write after every results WAIT; it raises NotReplicated. Resumed,
    the retried job leaves ann out and the replica holds bob and cy only."""
    cluster = redis_cluster_topology
    admin = redisclient.sync_client(cluster.url(*topology_users.admin()))
    gallery = keys.gallery(TENANT, "6w", MODEL)
    for sid in STUDENTS:
        save(tmp_path / "enroll" / sid / "1.png", photo([(sid, 10, 10, 60)]))
    settings = JobSettings(
        job_namespace=TENANT,
        job_name="rj-withdraw",
        job_uid=_uid(cluster, same_primary=False, prefix="uid-withdraw"),
        mode="enroll",
        class_code="6W",
        gallery="6w",
        input_dir=tmp_path / "enroll",
        redis_url=cluster.url(*topology_users.job(TENANT)),
        progress_interval_seconds=0,
        termination_log=tmp_path / "termination-log",
        submitted_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    assert _port(cluster, gallery) != _port(cluster, keys.job_results(TENANT, settings.job_uid))
    replica = _replica_pid(cluster, _port(cluster, gallery))

    def erase_then_stop() -> None:  # after the put, before the first publish
        admin.hset(keys.erased(TENANT, "6w"), "ann", keys.tombstone(int(time.time() * 1000)))
        os.kill(replica, signal.SIGSTOP)

    try:
        with pytest.raises(redisclient.NotReplicated):
            run(settings, engine_loader=lambda s, px: ToyEngine(), before_publish=erase_then_stop)
        assert _students(admin, gallery) == {"bob", "cy"}  # on the primary
    finally:
        os.kill(replica, signal.SIGCONT)
    try:
        summary, _ = run(settings, engine_loader=lambda s, px: ToyEngine())
        assert summary["enrolled"] == 2 and summary["erased_while_running"] == 1
        assert _on_replica(cluster, gallery) == {"bob", "cy"}
    finally:
        admin.close()


# --- the helper itself: a fresh write of its own, then WAIT on that connection ---------------------


def _confirms_what_another_connection_wrote(
    writer: redis.Redis, fresh: redis.Redis, key: str, stop: Any, replica: redis.Redis
) -> None:
    """``writer`` writes ``key`` on its own connection, the primary's replica stopped: ``fresh``,
    whose connection last spoke before that write, must not confirm it; resumed, it confirms it
    and the replica holds it. A WAIT alone on ``fresh`` would count the replica as up to date at
    once: the offset WAIT waits for is that of the connection's last command (Redis 7.0) or last
    write (later versions), both before ``writer``'s write."""
    wait_key = GalleryStore(fresh, TENANT).wait_key(GALLERY, MODEL)
    fresh.get(wait_key)  # connected to that primary, its last command before the write
    with stop:
        writer.hset(key, "ann", b"\x00" * 12)
        with pytest.raises(redisclient.NotReplicated):
            redisclient.confirm_on(fresh, wait_key, 1, timeout_ms=300)
    redisclient.confirm_on(fresh, wait_key, 1)
    assert _students(replica, key) == {"ann"}
    redisclient.confirm_on(fresh, wait_key, 0)  # 0: no wait (and no write)


def test_confirm_on_counts_a_cluster_primarys_writes_from_any_connection(
    redis_cluster_topology: Cluster, topology_users: Users
) -> None:
    cluster = redis_cluster_topology
    key = keys.gallery(TENANT, "6c", MODEL)
    admin = redisclient.sync_client(cluster.url(*topology_users.admin()))
    fresh = redisclient.sync_client(cluster.url(*topology_users.job(TENANT)))
    primary = _port(cluster, key)
    assert _port(cluster, GalleryStore(fresh, TENANT).wait_key("6c", MODEL)) == primary
    try:
        with cluster.admin(_replica_port(cluster, primary)) as replica:
            replica.execute_command("READONLY")
            stop = _stopped(_replica_pid(cluster, primary))
            _confirms_what_another_connection_wrote(admin, fresh, key, stop, replica)
    finally:
        admin.close()
        fresh.close()


def test_confirm_on_counts_a_single_primarys_writes_from_any_connection(tmp_path: Path) -> None:
    """A ``redis://`` primary with a replica (what a Sentinel master is to the job's client)."""
    with replica_pair(tmp_path) as pair:
        writer, fresh, replica = (pair.admin(s) for s in (pair.primary, pair.primary, pair.replica))
        try:
            key = keys.gallery(TENANT, GALLERY, MODEL)
            _confirms_what_another_connection_wrote(
                writer, fresh, key, stopped(pair.replica), replica
            )
        finally:
            for client in (writer, fresh, replica):
                client.close()
