"""An erase answered 200 survives a real Sentinel election; one answered 503 may not, and says so.

Real servers only: a master, one replica replicating through a relay the test holds and cuts, and
three sentinels that elect a new master on their own once the master is SIGKILLed
(tests/sentinelrelay.py); the components' ACL users; the API in-process as its own Redis user on
a ``redis+sentinel://`` URL, and the real apiserver (each erase records an Event). The relay
keeps the erase from the replica exactly when the test says, which loopback replication alone is
too fast to allow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from apirig import api_settings, in_process
from redistopo_fixtures import Users
from replicarig import until
from rollcall_contract import keys, redisclient
from rollcall_job.gallery import GalleryMeta, GalleryStore
from sentinelrelay import RelayedGroup, relayed_sentinel_group
from test_erase_replicas import Api

META = GalleryMeta("dlib-resnet-v1", 4, "euclidean")
CLASS = "7B"
STUDENT = "s-001"
PATH = f"/v1/classes/{CLASS}/students/{STUDENT}"


@pytest.fixture
def rig(tmp_path: Path, topology_users: Users) -> Iterator[RelayedGroup]:
    """A master, its replica behind a relay, three sentinels (one per test: tests kill the master)."""
    with relayed_sentinel_group(tmp_path / "sentinel", topology_users.acl) as group:
        yield group


@contextlib.asynccontextmanager
async def _api(
    rig: RelayedGroup,
    users: Users,
    tmp_path: Path,
    kubeconfig: Path,
    namespace: str,
    **settings: Any,
) -> AsyncIterator[Api]:
    """The API as the API's Redis user on the group's Sentinel URL, with the given settings."""
    url = rig.group.url(*users.api())
    api, issued = api_settings(tmp_path, kubeconfig, url, {"north": [namespace]}, **settings)
    async with in_process(api) as http:
        yield Api(http, issued["north"], namespace)


def _holds(r: redis.Redis, tenant: str) -> tuple[bool, bool]:
    """(the student's template in the gallery, the student's tombstone) on the node ``r``."""
    template = bool(r.hexists(keys.gallery(tenant, CLASS, META.model_id), STUDENT))
    return template, bool(r.hexists(keys.erased(tenant, CLASS), STUDENT))


def _enrol(rig: RelayedGroup, users: Users, tenant: str) -> None:
    """The student's template written through the Sentinel URL; on the replica before the test
    goes on, and the replica still behind the relay (not re-pointed by a sentinel)."""
    admin = redisclient.sync_client(rig.group.url(*users.admin()), socket_timeout=10)
    try:
        GalleryStore(admin, tenant).put(
            CLASS, META, {s: [[0.5] * META.dim] for s in (STUDENT, "s-002")}
        )
    finally:
        admin.close()
    with rig.admin(rig.replica) as replica:
        until("the replica to hold the enrolment", lambda: _holds(replica, tenant) == (True, False))
    assert rig.replica_master_port() == rig.relay.port


def _promote(rig: RelayedGroup) -> int:
    """SIGKILL the master and wait until the sentinels name the replica master; its port."""
    # the replica refuses a sentinel's re-pointing at the real master (sentinelrelay)
    assert rig.replica_master_port() == rig.relay.port, "the relay was bypassed"
    old = rig.group.kill_master()
    # about 2.3 s here; 50 s covers split votes (each retry waits 2 x failover-timeout)
    new = rig.group.wait_promoted(old, timeout=50)
    assert new == rig.replica.port
    return new


async def _repeat_after_failover(north: Api, timeout: float = 10) -> httpx.Response:
    """The DELETE repeated as a client does: a pooled connection to the dead master answers the
    first attempt with 503 ``unavailable`` (Retry-After), the next reconnects through the
    sentinels. Any other answer is returned at once (an ``erase_unconfirmed`` included)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await north.delete(PATH)
        unavailable = resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        if not unavailable or asyncio.get_running_loop().time() > deadline:
            return resp
        await asyncio.sleep(0.2)


async def _release_once_waiting(rig: RelayedGroup, users: Users) -> None:
    """Release the relay once a client blocks on the master (the API's WAIT), not before: the
    erase is then sent to the replica only if the API waits for it."""
    user, password = users.admin()
    master = redis.asyncio.Redis(
        host="127.0.0.1", port=rig.group.master.port, username=user, password=password
    )
    try:
        async with asyncio.timeout(20):
            while int((await master.info("clients"))["blocked_clients"]) == 0:
                await asyncio.sleep(0.02)
        rig.relay.release()
    finally:
        await master.aclose()


async def _erase_then_kill(rig: RelayedGroup, users: Users, north: Api) -> httpx.Response:
    """DELETE with the relay holding (released only when the API WAITs), then at once cut the
    relay, SIGKILL the master and wait for the sentinels to promote the replica."""
    rig.relay.hold()
    releaser = asyncio.create_task(_release_once_waiting(rig, users))
    resp = await north.delete(PATH)
    rig.relay.cut()  # whatever the replica has not got by now, it never gets
    releaser.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await releaser
    _promote(rig)
    return resp


async def test_a_503_erase_is_not_on_the_replica_the_sentinels_promote(
    rig: RelayedGroup, topology_users: Users, tmp_path: Path, kubeconfig: Path, namespace: str
) -> None:
    """The relay holds: the erase is applied on the master, unconfirmed (503). The master dies
    before the replica got it and the sentinels promote the replica, which still holds the
    template: the 503 was right not to say "erased". The same DELETE repeated reaches the
    promoted master through the Sentinel URL and erases it there (200)."""
    async with _api(
        rig, topology_users, tmp_path, kubeconfig, namespace, erase_replica_timeout_ms=500
    ) as north:
        _enrol(rig, topology_users, namespace)
        rig.relay.hold()
        first = await north.delete(PATH)
        assert first.status_code == 503, first.text
        assert first.json()["error"]["code"] == "erase_unconfirmed"
        with rig.admin(rig.group.master) as master:  # applied on the master, not confirmed
            assert _holds(master, namespace) == (False, True)

        _promote(rig)  # the relay still holds what the master sent
        with rig.admin(rig.replica) as promoted:
            assert _holds(promoted, namespace) == (True, False)

        again = await _repeat_after_failover(north)
        assert again.status_code == 200, again.text
        assert again.json()["templates"] == 1
        with rig.admin(rig.replica) as promoted:
            assert _holds(promoted, namespace) == (False, True)


@pytest.mark.parametrize(
    ("replicas", "promoted_holds"),
    [
        pytest.param("all", (False, True), id="waits"),
        # the control: without the wait the 200 comes before the replica got anything, and the
        # promoted replica serves the template again; the rig tells the two apart
        pytest.param(0, (True, False), id="control-no-wait"),
    ],
)
async def test_a_200_erase_is_on_the_replica_the_sentinels_promote(
    rig: RelayedGroup,
    topology_users: Users,
    tmp_path: Path,
    kubeconfig: Path,
    namespace: str,
    replicas: int | str,
    promoted_holds: tuple[bool, bool],
) -> None:
    """The relay delivers only while the API waits; the master is SIGKILLed and the relay cut
    right after the 200. The promoted replica has no template and has the class's tombstone;
    without the wait (the control) the 200 comes first and the election brings the template
    back."""
    async with _api(
        rig, topology_users, tmp_path, kubeconfig, namespace, erase_replicas=replicas
    ) as north:
        _enrol(rig, topology_users, namespace)
        resp = await _erase_then_kill(rig, topology_users, north)
        assert resp.status_code == 200, resp.text
        assert resp.json()["templates"] == 1
        with rig.admin(rig.replica) as promoted:
            assert _holds(promoted, namespace) == promoted_holds


def test_the_rig_replica_refuses_a_sentinels_repointing(rig: RelayedGroup) -> None:
    """What keeps the relay in the path however slow a test runs: the transaction a sentinel
    sends to re-point the replica at the real master (+fix-slave-config) aborts on the replica,
    which still replicates through the relay. (Without this the sentinels bypassed the relay
    about 7 s after they found the replica.) The promotion's ``REPLICAOF NO ONE`` is allowed:
    the tests above are elected through it."""
    with rig.admin(rig.replica) as replica:
        fix = replica.pipeline(transaction=True)
        fix.execute_command("SLAVEOF", "127.0.0.1", str(rig.group.master.port))
        fix.execute_command("CONFIG", "REWRITE")
        with pytest.raises(redis.exceptions.NoPermissionError, match="slaveof"):
            fix.execute()
    assert rig.replica_master_port() == rig.relay.port
