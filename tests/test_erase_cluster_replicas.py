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
