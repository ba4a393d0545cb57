"""On Redis Cluster an erase answers 200 only once the replicas of every primary it wrote to hold
it: the class tombstone's, each changed gallery's and each deleted result's (``WAIT`` on each).

Real servers only: the Cluster rig of hack/redistopo.py (3 primaries, a replica each, the
components' ACL users), the API in-process as its own Redis user, the real apiserver (each erase
records an Event). The class and job are chosen so that the tombstone, the gallery and the result
sit on three different primaries; one replica is SIGSTOPped (connected, confirming nothing). The
pure rule of an unconfirmed erase's marker comes first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from apirig import write_key_file
from redistopo import Cluster
from redistopo_fixtures import Users
from rollcall_api.app import create_app
from rollcall_api.erasure import (
    MARKER_FRESH_SECONDS,
    Erasure,
    Marker,
    fresh_marker,
    unconfirmed_key,
    unconfirmed_message,
)
from rollcall_api.settings import Settings
from rollcall_contract import keys, redisclient
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.results import read_results, write_results

META = GalleryMeta("dlib-resnet-v1", 4, "euclidean")
STUDENT = "s-001"
NOW = 1_700_000_000_000
DONE = Erasure(models=["m"], templates=1, results=1, class_found=True)

# --- pure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_s", "fresh"),
    [
        (0, True),
        (30, True),  # a repeat after the 503's Retry-After, or the CLI's --wait
        (MARKER_FRESH_SECONDS, True),
        (MARKER_FRESH_SECONDS + 1, False),  # not repeated in time: a found-nothing erase is a 404
        (25 * 3600, False),  # the marker hash's whole life
        (-5, True),  # written by a replica whose clock runs a little ahead
        (-(MARKER_FRESH_SECONDS + 1), False),  # ...or far ahead
    ],
)
def test_an_unconfirmed_erase_lends_its_counts_for_minutes_only(age_s: int, fresh: bool) -> None:
    marker = Marker(DONE, NOW - age_s * 1000, (1, 2))
    assert fresh_marker(marker, NOW) == (marker if fresh else None)


def test_no_marker_lends_nothing() -> None:
    assert fresh_marker(None, NOW) is None


# --- a real cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A class, its gallery's key and a job uid whose keys sit on three different primaries."""

    class_name: str
    uid: str
    ports: dict[str, int]  # "tombstone" | "gallery" | "result" -> port of the primary


def _layout(cluster: Cluster, tenant: str) -> Layout:
    def port(key: str) -> int:
        return cluster.port_of_slot(cluster.keyslot(key))

    for c in range(200):
        name = f"7B-{c}"
        tomb, gallery = (
            port(keys.erased(tenant, name)),
            port(keys.gallery(tenant, name, META.model_id)),
        )
        if tomb == gallery:
            continue
        for u in range(200):
            uid = f"uid-{u}"
            result = port(keys.job_results(tenant, uid))
            if result not in (tomb, gallery):
                ports = {"tombstone": tomb, "gallery": gallery, "result": result}
                return Layout(name, uid, ports)
    raise AssertionError("no class lands on three primaries")


def _replica_pid(cluster: Cluster, primary_port: int) -> int:
    """The process of the replica of the primary on ``primary_port`` (CLUSTER NODES)."""
    with cluster.admin(primary_port) as c:
        nodes = c.cluster("NODES")
    primary_id = next(
        str(n["node_id"]) for a, n in nodes.items() if int(a.rsplit(":", 1)[1]) == primary_port
    )
    port = next(
        int(a.rsplit(":", 1)[1]) for a, n in nodes.items() if n.get("master_id") == primary_id
    )
    return next(n.process.pid for n in cluster.nodes if n.port == port)


def _replica_port(cluster: Cluster, primary_port: int) -> int:
    pid = _replica_pid(cluster, primary_port)
    return next(n.port for n in cluster.nodes if n.process.pid == pid)


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def _api(
    cluster: Cluster, users: Users, tmp_path: Path, kubeconfig: Path, namespace: str
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    issued = write_key_file(tmp_path / "keys.yaml", {"north": [namespace]})
    settings = Settings(
        kubeconfig=kubeconfig,
        keys_file=tmp_path / "keys.yaml",
        redis_url=cluster.url(*users.api()),
        keys_reload_seconds=0,
        erase_replica_timeout_ms=500,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http, {"Authorization": f"Bearer {issued['north']}"}


def _enrol(admin: redis.Redis, tenant: str, layout: Layout) -> None:
    GalleryStore(admin, tenant).put(
        layout.class_name, META, {s: [[0.5] * META.dim] for s in (STUDENT, "s-002")}
    )
    doc = {"attendance": {"present": [{"student": STUDENT}]}}
    write_results(admin, tenant, layout.uid, "1", doc, ttl_seconds=600, replicas=1)


@pytest.mark.parametrize("stop", ["gallery", "result"])
async def test_an_erase_waits_for_the_replica_of_every_primary_it_wrote_to(
    redis_cluster_topology: Cluster,
    topology_users: Users,
    tmp_path: Path,
    kubeconfig: Path,
    namespace: str,
    stop: str,
) -> None:
    """The replica of the gallery's (or the result's) primary stopped, the tombstone's running:
    503, and 503 again for the same DELETE repeated (the marker names the slots the first wrote);
    running again, the same DELETE is a 200 with the first attempt's counts, then a 404."""
    cluster = redis_cluster_topology
    layout = _layout(cluster, namespace)
    path = f"/v1/classes/{layout.class_name}/students/{STUDENT}"
    admin = redisclient.sync_client(cluster.url(*topology_users.admin()))
    gallery = keys.gallery(namespace, layout.class_name, META.model_id)
    try:
        _enrol(admin, namespace, layout)
        async with _api(cluster, topology_users, tmp_path, kubeconfig, namespace) as (http, auth):
            with _stopped(_replica_pid(cluster, layout.ports[stop])):
                first = await http.delete(path, headers=auth)
                # the repeat finds nothing left; it still waits on the primaries the first wrote
                repeat = await http.delete(path, headers=auth)
            assert repeat.status_code == 503, repeat.text
            assert first.status_code == 503, first.text
            assert first.json()["error"]["code"] == "erase_unconfirmed"
            # three primaries, one replica each; the stopped one did not confirm
            assert first.json()["error"]["message"] == unconfirmed_message(2, 3)
            assert not admin.hexists(gallery, STUDENT)  # applied on the primaries
            assert read_results(admin, namespace, layout.uid) is None

            again = await http.delete(path, headers=auth)
            assert again.status_code == 200, again.text
            assert (again.json()["templates"], again.json()["results"]) == (1, 1)
            with cluster.admin(_replica_port(cluster, layout.ports["gallery"])) as replica:
                replica.execute_command("READONLY")
                assert not replica.hexists(gallery, STUDENT)
            assert not admin.hexists(unconfirmed_key(namespace, layout.class_name), STUDENT)
            assert (await http.delete(path, headers=auth)).status_code == 404
    finally:
        admin.close()


# --- slots that move under an erase ---------------------------------------------------------------


def _one_primary_class(cluster: Cluster, tenant: str) -> tuple[str, int]:
    """A class whose tombstone and gallery sit on one primary; and that primary's port."""
    for c in range(500):
        name = f"7C-{c}"
        tomb = cluster.port_of_slot(cluster.keyslot(keys.erased(tenant, name)))
        gallery = cluster.port_of_slot(cluster.keyslot(keys.gallery(tenant, name, META.model_id)))
        if tomb == gallery:
            return name, tomb
    raise AssertionError("no class has its tombstone and gallery on one primary")


def _migrate_keys(cluster: Cluster, slot: int, source: int, target: int) -> None:
    """Start moving ``slot`` from the primary on port ``source`` to ``target`` the way
    ``redis-cli --cluster reshard`` does, and move its keys: the slot stays ``source``'s (CLUSTER
    SLOTS still says so) while a command for one of its keys is answered with ASK ``target``."""
    ids = {port: node_id for node_id, port in cluster.primaries().items()}
    with cluster.admin(target) as t, cluster.admin(source) as s:
        t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        names = s.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
        assert names, "nothing to migrate"
        assert cluster.acl is not None
        auth = ["AUTH2", cluster.acl.admin, cluster.acl.admin_password]
        s.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, *auth, "KEYS", *names)


def _finish_migration(cluster: Cluster, slot: int, target: int) -> None:
    ids = {port: node_id for node_id, port in cluster.primaries().items()}
    for port in ids:
        with cluster.admin(port) as c:
            c.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])


def _replica_caught_up(cluster: Cluster, primary: int) -> bool:
    with cluster.admin(primary) as c:
        info = c.info("replication")
    offsets = [int(v["offset"]) for k, v in info.items() if k.startswith("slave")]
    return bool(offsets) and min(offsets) == int(info["master_repl_offset"])


async def test_an_erase_while_its_gallery_slot_migrates_is_never_confirmed_early(
    redis_cluster_to_break: Cluster,
    topology_users: Users,
    tmp_path: Path,
    kubeconfig: Path,
    namespace: str,
) -> None:
    """A resharding is moving the gallery's slot: its keys are already on the target primary
    while the slot map (CLUSTER SLOTS, redis-py's) still names the source. The erase waits on the
    primaries its map gives the written slots to, so a write that followed an ASK redirection to
    the target would be confirmed on the source's replicas only. It never is: redis-py refuses
    ASK inside a WATCH/MULTI transaction, which every erase write is, so with the target's replica
    stopped the erase answers 503 and no 200. Once the migration ends, the repeat removes the
    template on the target (MOVED updates the map first) and waits there: 200, and the target's
    replica no longer holds it."""
    cluster = redis_cluster_to_break
    class_name, source = _one_primary_class(cluster, namespace)
    target = next(p for p in cluster.primaries().values() if p != source)
    gallery = keys.gallery(namespace, class_name, META.model_id)
    slot = cluster.keyslot(gallery)
    path = f"/v1/classes/{class_name}/students/{STUDENT}"
    admin = redisclient.sync_client(cluster.url(*topology_users.admin()))
    try:
        GalleryStore(admin, namespace).put(
            class_name, META, {s: [[0.5] * META.dim] for s in (STUDENT, "s-002")}
        )
        async with _api(cluster, topology_users, tmp_path, kubeconfig, namespace) as (http, auth):
            # the API's slot map is read now, before the resharding starts
            nobody = await http.delete(f"/v1/classes/{class_name}/students/s-none", headers=auth)
            assert nobody.status_code == 404, nobody.text
            _migrate_keys(cluster, slot, source, target)
            deadline = time.monotonic() + 10
            while not _replica_caught_up(cluster, target):  # it holds the template, migrated
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # a plain command follows the ASK redirection as the API's own ACL user (ASKING)
            api_user = redisclient.sync_client(cluster.url(*topology_users.api()))
            try:
                assert api_user.hexists(gallery, STUDENT)
            finally:
                api_user.close()
            with _stopped(_replica_pid(cluster, target)):
                first = await http.delete(path, headers=auth)
                # "unavailable" (the transaction's AskError); "erase_unconfirmed" would be as
                # right (a wait on the target), a 200 is the failure this test exists for
                assert first.status_code == 503, first.text
                assert first.json()["error"]["code"] in {"unavailable", "erase_unconfirmed"}
                _finish_migration(cluster, slot, target)
            again = await http.delete(path, headers=auth)
            assert again.status_code == 200, again.text
            assert again.json()["templates"] == 1
        with cluster.admin(_replica_port(cluster, target)) as replica:
            replica.execute_command("READONLY")
            deadline = time.monotonic() + 10
            while True:  # the replica learns that its primary now serves the slot
                try:
                    assert replica.hexists(gallery, "s-002")  # the class is still there...
                    break
                except redis.ResponseError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert not replica.hexists(gallery, STUDENT)  # ...without the erased student
    finally:
        admin.close()
