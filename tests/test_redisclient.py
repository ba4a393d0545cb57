"""The Redis URL grammar of ``rollcall_contract.redisclient``: pure parsing and redaction, and which
redis-py client each scheme builds (single node and Sentinel clients connect lazily, so no server is
needed; Cluster clients connect at once and are covered by tests/test_redis_topologies.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from rollcall_contract import redisclient
from rollcall_contract.redisclient import Target, parse, redact, split

PARSED: list[tuple[str, Target]] = [
    ("redis://r:6379/0", Target("single", False, "redis://r:6379/0")),
    ("rediss://u:p@r:6380/2", Target("single", True, "rediss://u:p@r:6380/2")),
    ("unix:///run/redis.sock", Target("single", False, "unix:///run/redis.sock")),
    (
        "redis+cluster://a:7000,b:7001,[::1]:7002",
        Target("cluster", False, "", (("a", 7000), ("b", 7001), ("::1", 7002)), replicas=1),
    ),
    ("redis+cluster://a:7000?replicas=0", Target("cluster", False, "", (("a", 7000),))),
    (
        "rediss+cluster://rollcall-api:p%40ss@c1/0",
        Target(
            "cluster",
            True,
            "",
            (("c1", 6379),),
            username="rollcall-api",
            password="p@ss",
            replicas=1,
        ),
    ),
    (
        "redis+sentinel://s1:26379,s2,s3:26380/rollcall",
        Target(
            "sentinel",
            False,
            "",
            (("s1", 26379), ("s2", 26379), ("s3", 26380)),
            "rollcall",
            replicas=1,
        ),
    ),
    (
        "rediss+sentinel://job:pw@s1/mymaster/3?sentinel_username=sen&sentinel_password=x%26y"
        "&replicas=2",
        Target("sentinel", True, "", (("s1", 26379),), "mymaster", 3, "job", "pw", "sen", "x&y", 2),
    ),
    (
        "redis+sentinel://:only-pass@s1:26379/m",
        Target("sentinel", False, "", (("s1", 26379),), "m", password="only-pass", replicas=1),
    ),
]


@pytest.mark.parametrize(("url", "want"), PARSED)
def test_parse(url: str, want: Target) -> None:
    got = parse(url)
    assert got.url == url
    assert replace(got, url="") == replace(want, url="")


REFUSED: list[tuple[str, str]] = [
    ("http://r:6379", "unsupported Redis URL scheme"),
    ("redis+cluster://a:7000/1", "database 0 only"),
    ("redis+cluster://a:7000?ssl=true", "unknown Redis cluster URL parameters"),
    ("redis+cluster://a:7000?replicas=one", "replicas in a Redis URL must be a number"),
    ("redis+cluster://a:7000,,b:7001", "empty host"),
    ("redis+cluster://a:x", "bad port"),
    ("redis+cluster://a:70000", "out of range"),
    ("redis+cluster://[::1:7000", "IPv6"),
    ("redis+sentinel://s1:26379", r"/<master-name>\[/<db>\]"),
    ("redis+sentinel://s1:26379/m/0/extra", r"/<master-name>\[/<db>\]"),
    ("redis+sentinel://s1:26379/m/zero", "must be a number"),
    ("redis+sentinel://s1/m?password=x", "unknown Redis sentinel URL parameters"),
    ("redis+sentinel://s1/m#frag", "no #fragment"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_parse_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(url)


def test_errors_and_reprs_never_carry_a_password() -> None:
    secret = "hunter2-secret"
    for url in (
        f"redis+cluster://u:{secret}@a:x",
        f"redis+sentinel://u:{secret}@s1/m/bad",
        f"redis+sentinel://u:{secret}@s1/m?sentinel_password={secret}&bogus=1",
    ):
        with pytest.raises(ValueError) as info:
            parse(url)
        assert secret not in str(info.value)
    target = parse(f"redis+sentinel://u:{secret}@s1/m?sentinel_password={secret}")
    assert secret not in repr(target)


REDACTED: list[tuple[str, str]] = [
    ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
    ("redis://u:p%40ss@[::1]:6379", "redis://u:***@[::1]:6379"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
    ("redis+cluster://api:pw@a:7000,b:7001", "redis+cluster://api:***@a:7000,b:7001"),
    (
        "rediss+sentinel://job:pw@s1,s2/m/1?sentinel_username=s&sentinel_password=x",
        "rediss+sentinel://job:***@s1,s2/m/1?sentinel_username=s&sentinel_password=***",
    ),
    ("redis+sentinel://nopass@s1/m", "redis+sentinel://nopass@s1/m"),
    ("redis+cluster://api:pw@a:7000,[::1]:7001", "redis+cluster://api:***@a:7000,[::1]:7001"),
]


@pytest.mark.parametrize(("url", "want"), REDACTED)
def test_redact(url: str, want: str) -> None:
    assert redact(url) == want


SPLIT: list[tuple[str, tuple[str, str, str, str, str]]] = [
    # an IPv6 host after another: Python's urlsplit refuses it where CVE-2025-0938 is fixed
    (
        "redis+cluster://u:p@a:1,[::1]:2/0?replicas=2",
        ("redis+cluster", "u:p@a:1,[::1]:2", "/0", "replicas=2", ""),
    ),
    (
        "redis+sentinel://s1,[fe80::1]:26379/m/1#x",
        ("redis+sentinel", "s1,[fe80::1]:26379", "/m/1", "", "x"),
    ),
    ("rediss+cluster://a:1,b:2?replicas=0", ("rediss+cluster", "a:1,b:2", "", "replicas=0", "")),
    ("redis+cluster://a:1,[::1]:2", ("redis+cluster", "a:1,[::1]:2", "", "", "")),
    ("unix:///run/redis.sock", ("unix", "", "/run/redis.sock", "", "")),
]


@pytest.mark.parametrize(("url", "want"), SPLIT)
def test_split_takes_several_hosts_on_any_python(url: str, want: tuple[str, ...]) -> None:
    assert split(url) == want


def test_single_node_client_is_from_url() -> None:
    client = redisclient.sync_client("redis://u:pw@r:6390/4", socket_timeout=7)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("r", 6390, 4)
    assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == ("u", "pw", 7)
    client.close()


def test_sentinel_client_asks_the_sentinels_for_the_named_master() -> None:
    client = redisclient.sync_client(
        "redis+sentinel://job:pw@s1:1,s2:2/rollcall/3?sentinel_password=sp", socket_timeout=4
    )
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "rollcall" and pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "job", "pw")
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["port"]) for s in sentinels] == [1, 2]
    skw = sentinels[0].connection_pool.connection_kwargs
    assert (skw["password"], skw["socket_timeout"]) == ("sp", 4)
    assert skw.get("username") is None  # the data nodes' user is not sent to the sentinels
    client.close()


def test_async_sentinel_client_with_tls_and_a_ca(tmp_path: pytest.TempPathFactory) -> None:
    async def build() -> None:
        client = redisclient.async_client("rediss+sentinel://s1/m", "/etc/ca.crt")
        pool = client.connection_pool
        assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
        kwargs = pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == "/etc/ca.crt" and kwargs["ssl_cert_reqs"] == "required"
        assert pool.connection_class is redis.asyncio.sentinel.SentinelManagedSSLConnection
        sentinel_kwargs = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
        assert sentinel_kwargs["ssl_ca_certs"] == "/etc/ca.crt"
        await client.aclose()

    asyncio.run(build())


@pytest.mark.parametrize("url", ["redis://r", "redis+cluster://a:7000", "redis+sentinel://s1/m"])
def test_a_ca_file_without_tls_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not rediss"):
        redisclient.sync_client(url, "/etc/ca.crt")


@pytest.mark.parametrize(
    ("url", "resend", "base", "resends"),
    [
        ("redis://r/0", True, redis.asyncio.connection.Connection, 1),
        ("redis://r/0", False, redis.asyncio.connection.Connection, 0),
        ("redis+sentinel://s1/m", True, redis.asyncio.sentinel.SentinelManagedConnection, 1),
        ("rediss+sentinel://s1/m", True, redis.asyncio.sentinel.SentinelManagedSSLConnection, 1),
        ("redis+sentinel://s1/m", False, redis.asyncio.sentinel.SentinelManagedConnection, 0),
    ],
)
def test_resend_is_one_retry_on_connection_errors_and_a_sentinel_reconnect(
    url: str, resend: bool, base: type[redis.asyncio.connection.AbstractConnection], resends: int
) -> None:
    """``resend``: one more try, on connection errors only (a timeout may have been applied);
    on Sentinel with a connection that asks the sentinels again when the retry reconnects
    (tests/test_api_redis_reconnect.py shows both on real servers)."""

    async def build() -> None:
        client = redisclient.async_client(url, resend=resend)
        pool = client.connection_pool
        assert issubclass(pool.connection_class, base)
        overridden = pool.connection_class.connect_check_health is not base.connect_check_health
        assert overridden is (resend and "sentinel" in url)
        conn = pool.make_connection()  # type: ignore[no-untyped-call]
        assert conn.retry.get_retries() == resends
        if resends:
            assert conn.retry._supported_errors == (redis.exceptions.ConnectionError,)
        await client.aclose()

    asyncio.run(build())


def test_a_cluster_client_keeps_redis_pys_own_retry() -> None:
    """The cluster client re-reads the slot map and retries itself; ``resend`` adds nothing."""

    async def build() -> None:
        plain: Any = redisclient.async_client("redis+cluster://a:7000")
        resent: Any = redisclient.async_client("redis+cluster://a:7000", resend=True)
        assert type(resent.retry) is type(plain.retry)
        assert resent.retry.get_retries() == plain.retry.get_retries()
        await plain.aclose()
        await resent.aclose()

    asyncio.run(build())
