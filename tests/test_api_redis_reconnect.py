"""A lost Redis connection costs the API no request: the store resends, the eraser does not.

Real servers only: a redis-server whose clients the test drops (``CLIENT KILL``, what a restarted
server or a network blip leaves in the API's pool), a Sentinel group whose master the test
SIGKILLs and whose sentinels elect a replica, the real apiserver, the API in-process. Before the
store's client resent (``redisclient.async_client(resend=True)``), the first request after either
answered 503 and the client had to repeat it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.sentinel

from apirig import api_settings, in_process
from redisrig import redis_server
from redistopo import SERVICE, SentinelGroup
from redistopo_fixtures import Users
from replicarig import until
from rollcall_api.store import Store
from rollcall_contract import keys, redisclient

BODY: dict[str, Any] = {
    "classCode": "7B",
    "images": {"claimName": "photos", "subPath": "2026-12-03/period-1"},
    "roster": ["s-001", "s-002"],
}


@dataclass
class Api:
    http: httpx.AsyncClient
    key: str

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers={"Authorization": f"Bearer {self.key}"})

    async def submit(self, idempotency_key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": idempotency_key}
        return await self.http.post("/v1/recognition-jobs", json=BODY, headers=headers)

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers={"Authorization": f"Bearer {self.key}"})


@contextlib.asynccontextmanager
async def _api(
    redis_url: str, tmp_path: Path, kubeconfig: Path, namespace: str
) -> AsyncIterator[Api]:
    settings, issued = api_settings(tmp_path, kubeconfig, redis_url, {"north": [namespace]})
    async with in_process(settings) as http:
        yield Api(http, issued["north"])


async def _ready(api: Api) -> None:
    resp = await api.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"]["redis"] == "ok"


async def test_the_first_requests_after_the_server_dropped_every_connection_are_served(
    tmp_path: Path, kubeconfig: Path, namespace: str, crds: list[str]
) -> None:
    """Every pooled connection is closed by the server: readiness, a new idempotent submit and
    the replay of an earlier one are all served on their first try. An erase is not resent: its
    first try answers 503 ``unavailable`` (it must confirm on the server that took it), the
    repeat goes through."""
    with redis_server(tmp_path / "redis") as server:
        async with _api(server.url, tmp_path, kubeconfig, namespace) as api:
            await _ready(api)
            first = await api.submit("k-1")
            assert first.status_code == 202, first.text
            assert (await api.delete("/v1/classes/7B/students/s-001")).status_code == 404

            with redis.Redis(port=server.port) as admin:
                dropped = admin.client_kill_filter(_type="normal", skipme=True)
            assert dropped >= 2  # the store's pool and the eraser's

            await _ready(api)
            new = await api.submit("k-2")
            assert new.status_code == 202, new.text
            assert "idempotent-replayed" not in new.headers
            replay = await api.submit("k-1")
            assert replay.status_code == 202, replay.text
            assert replay.headers["idempotent-replayed"] == "true"
            assert replay.json()["id"] == first.json()["id"]

            erase = await api.delete("/v1/classes/7B/students/s-001")
            assert erase.status_code == 503, erase.text
            assert erase.json()["error"]["code"] == "unavailable"
            assert (await api.delete("/v1/classes/7B/students/s-001")).status_code == 404


def _discovered(group: SentinelGroup) -> int | None:
    """The master port redis-py's own discovery finds now (what the API's client asks), if any."""
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        [("127.0.0.1", s.port) for s in group.sentinels], socket_timeout=2
    )
    try:
        _, port = sentinel.discover_master(SERVICE)  # type: ignore[no-untyped-call]
    except redis.sentinel.MasterNotFoundError:
        return None
    finally:
        for conn in sentinel.sentinels:
            conn.close()
    return int(port)


async def test_the_first_requests_after_a_sentinel_failover_are_served(
    redis_sentinel_topology: SentinelGroup,
    topology_users: Users,
    tmp_path: Path,
    kubeconfig: Path,
    namespace: str,
    crds: list[str],
) -> None:
    """The master is SIGKILLed and the sentinels promote a replica: once the failover has ended,
    the pooled connections still point at a dead process, and the resend reconnects to the
    master the sentinels name now."""
    group = redis_sentinel_topology
    async with _api(group.url(*topology_users.api()), tmp_path, kubeconfig, namespace) as api:
        await _ready(api)
        assert (await api.submit("k-1")).status_code == 202

        old = group.kill_master()
        new_port = group.wait_promoted(old)
        # the promoted node serves before the failover ends; until then (the other replica is
        # re-pointed) the sentinels still list the old master as down, and redis-py finds none
        until("the failover to end", lambda: _discovered(group) == new_port)

        await _ready(api)
        new = await api.submit("k-2")
        assert new.status_code == 202, new.text
        assert "idempotent-replayed" not in new.headers


async def test_a_claim_that_finds_its_own_value_won(redis_url: str) -> None:
    """What a resent SET NX finds when the first one took effect and only its reply was lost:
    the request's own (fresh) job name. That request won; another request's value did not."""
    client = redisclient.async_client(redis_url, resend=True)
    store = Store(client)
    try:
        ours = await store.claim("ns", "k-1", "rj-ours", "fp", ttl=60)
        assert ours.won
        again = await store.claim("ns", "k-1", "rj-ours", "fp", ttl=60)  # the resend's view
        assert again.won and again.raw == ours.raw
        other = await store.claim("ns", "k-1", "rj-other", "fp", ttl=60)
        assert not other.won and other.name == "rj-ours"
        assert await client.exists(keys.idempotency("ns", "k-1"))
    finally:
        await client.aclose()
