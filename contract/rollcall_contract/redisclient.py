"""One Redis client factory for the API, the operator and the job: single node, Cluster or Sentinel.

The URL says which topology; the components never branch on it:

- ``redis://`` / ``rediss://`` (and ``unix://``): one server, ``Redis.from_url`` as before.
- ``redis+cluster://[user[:pass]@]host:port[,host:port...][/0]`` (``rediss+cluster://`` for TLS):
  redis-py's own ``RedisCluster`` with those startup nodes; it learns the rest from CLUSTER SLOTS
  and follows MOVED/ASK. Database 0 only (a cluster has no other).
- ``redis+sentinel://[user[:pass]@]host:port[,host:port...]/<master-name>[/<db>]``
  (``rediss+sentinel://``): redis-py's ``Sentinel(...).master_for(<master-name>)``, which asks the
  sentinels where the master is on every (re)connect, so a failover needs no restart. The user and
  password are the data nodes'; sentinels that require their own credentials take them from the
  ``sentinel_username`` / ``sentinel_password`` query parameters.

Replication is asynchronous: a master that dies right after acknowledging a write can take it
with it. On a cluster or Sentinel URL the job therefore waits, after publishing its results, until
``replicas`` replicas (query parameter, default 1; ``?replicas=0`` for a cluster without replicas)
hold them (``confirm_on``: a fresh write in the results' slot, then WAIT on that connection), and
exits TRANSIENT otherwise, so a retry publishes them again instead of a Succeeded job whose results
vanished in a failover. That WAIT counts one primary's replicas: on a cluster an enrolment's
gallery (slot ``{<class>:<model>}``) usually sits on another primary than its results
(``{<uid>}``), and a withdraw comes after the last publish, so those writes are confirmed on their
own primary too (``confirm_on``; skipped where ``same_primary`` says the results' WAIT already
covers them).

Why this works unchanged on a cluster: every multi-key operation rollcall does (the gallery's
hash + meta + packed MULTI/EXEC, RENAME of staging onto results, progress) uses keys that share a
hash tag (``rollcall_contract.keys``), and redis-py's cluster pipeline runs a transaction when all
of its keys are in one slot. SCAN on a ``RedisCluster`` (``scan_iter``) walks every primary.

A restarted server or a Sentinel failover leaves an asyncio client with pooled connections to a
process that is gone: the first command on each fails, and the API would answer 503 to a request
that could have been served. ``async_client(..., resend=True)`` sends a command (or a pipeline
without WATCH) that failed with a *connection* error once more on a fresh connection, which on a
Sentinel URL asks the sentinels for the master again (``_SentinelConnection``: redis-py 8.1
reconnects inside a command to the old address, redis/redis-py#3874). Only for work that is safe
to send twice and safe to send to another server: the API's store (reads, the Idempotency-Key
claim, its compare-and-delete) and the operator's progress reads. Not for the erase: its replica
confirmation must run on the primary that took the erase, so a lost connection there stays a 503
(``rollcall_api.erasure``). Timeouts are never resent (the server may have applied the command).
The job's blocking client has no resend either: before recognition a lost connection ends
its attempt (TRANSIENT, the Job retries it); after recognition it runs the whole write phase
again in the process (``rollcall_job.writeretry``). A cluster client follows redis-py's own
cluster retry in every case.

``parse`` is pure (table-tested in tests/test_redisclient.py); passwords never reach a repr or a
log line (``redact``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.cluster
import redis.exceptions
import redis.sentinel

from rollcall_contract import redistls

Kind = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES = frozenset({"redis", "rediss", "unix"})
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password", "replicas"})
CLUSTER_QUERY = frozenset({"replicas"})
DEFAULT_REPLICAS = 1  # what a cluster or sentinel write must reach before a job reports success
REPLICA_WAIT_MS = 2000  # well inside any socket timeout the components set
WAIT_KEY_TTL_SECONDS = 60  # life of ``confirm_on``'s key: it only has to be written before WAIT
# ``resend``: one more try after a lost connection, after a pause of up to 0.2 s (full jitter).
# Connection errors only; a connect refused counts as one too (Sentinel: no master elected yet).
RESEND_RETRIES = 1
RESEND_BACKOFF = (0.2, 0.1)  # (cap, base) seconds


class NotReplicated(redis.exceptions.ConnectionError):
    """The server took the write but too few replicas confirmed it in time: a failover now could
    lose it, so the work is retried (TRANSIENT) rather than reported done."""


# Errors after which the same work can succeed if tried again: the server is unreachable, still
# loading, a failover is under way (a demoted master answers writes with READONLY, the sentinels
# name no master yet, a cluster slot has no primary). The job exits TRANSIENT on these.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes MasterNotFoundError and NotReplicated
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.RedisClusterException,  # no reachable cluster node (not a RedisError)
)
# Everything a Redis call can raise for a reason outside the caller: what the API turns into 503.
ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.RedisError,
    OSError,
    redis.exceptions.RedisClusterException,
)


@dataclass(frozen=True)
class Target:
    """A parsed Redis URL: what to connect to and how. Secrets are kept out of ``repr``."""

    kind: Kind
    tls: bool
    url: str = field(repr=False)  # the original URL (single node: handed to from_url)
    nodes: tuple[tuple[str, int], ...] = ()  # cluster startup nodes or sentinels
    service: str = ""  # sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    replicas: int = 0  # replicas a job's results must reach (WAIT) before it reports success


def _hosts(netloc: str, kind: Kind) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` (IPv6 in brackets) after the ``user:pass@`` part."""
    hostlist = netloc.rpartition("@")[2]
    out: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if not item:
            raise ValueError(f"empty host in a {kind} Redis URL")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"bad IPv6 host in a {kind} Redis URL")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"empty host in a {kind} Redis URL")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT[kind]
        except ValueError:
            raise ValueError(f"bad port in a {kind} Redis URL") from None
        if not 0 < port < 65536:
            raise ValueError(f"port out of range in a {kind} Redis URL")
        out.append((host, port))
    return tuple(out)


def _userinfo(netloc: str) -> tuple[str | None, str | None]:
    if "@" not in netloc:
        return None, None
    info = netloc.rpartition("@")[0]
    user, sep, password = info.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError("the Redis database must be a number")
    return int(text)


def split(url: str) -> tuple[str, str, str, str, str]:
    """``urlsplit`` for URLs whose authority may list several hosts (``a:1,[::1]:2``).

    Python's own ``urlsplit`` refuses text before a ``[`` in the authority on interpreters with
    the CVE-2025-0938 fix (CPython 3.12.9, 3.13.2 and later; Debian backported it to its 3.11.2):
    a cluster or Sentinel URL whose IPv6 host is not the first was "Invalid IPv6 URL" there and
    parsed elsewhere (3.11.7, the images' pinned 3.11.11). The authority
    runs to the first ``/``, ``?`` or ``#`` (RFC 3986; a password holding one must be
    percent-encoded, as in any URL); the rest is split by ``urlsplit`` as before."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return urlsplit(url)
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    _, _, path, query, fragment = urlsplit(f"{scheme}://h{rest[end:]}")
    return scheme, rest[:end], path, query, fragment


def parse(url: str) -> Target:
    """The topology, nodes and credentials of ``url``; ValueError (naming no secret) if malformed."""
    scheme, netloc, path, query, fragment = split(url)
    scheme = scheme.lower()
    if scheme in SINGLE_SCHEMES:
        return Target("single", scheme == "rediss", url)
    if scheme not in CLUSTER_SCHEMES | SENTINEL_SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
    if fragment:
        raise ValueError("a Redis URL takes no #fragment")
    kind: Kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    tls = scheme.startswith("rediss")
    user, password = _userinfo(netloc)
    nodes = _hosts(netloc, kind)
    params = dict(parse_qsl(query, keep_blank_values=True))
    segments = [s for s in path.split("/") if s]
    unknown = set(params) - (CLUSTER_QUERY if kind == "cluster" else SENTINEL_QUERY)
    if unknown:
        raise ValueError(f"unknown Redis {kind} URL parameters: {sorted(unknown)}")
    replicas = params.get("replicas", str(DEFAULT_REPLICAS))
    if not replicas.isdigit():
        raise ValueError("replicas in a Redis URL must be a number")
    if kind == "cluster":
        if len(segments) > 1 or (segments and _db(segments[0]) != 0):
            raise ValueError("Redis Cluster has database 0 only")
        return Target(
            "cluster", tls, url, nodes, username=user, password=password, replicas=int(replicas)
        )
    if not 1 <= len(segments) <= 2:
        raise ValueError("a Redis Sentinel URL ends in /<master-name>[/<db>]")
    return Target(
        "sentinel",
        tls,
        url,
        nodes,
        service=unquote(segments[0]),
        db=_db(segments[1]) if len(segments) == 2 else 0,
        username=user,
        password=password,
        sentinel_username=params.get("sentinel_username") or None,
        sentinel_password=params.get("sentinel_password") or None,
        replicas=int(replicas),
    )


def redact(url: str) -> str:
    """``url`` with its passwords (userinfo and ``sentinel_password``) replaced by ``***``."""
    try:
        scheme, netloc, path, query, fragment = split(url)
    except ValueError:
        return "<unparseable redis url>"
    if "@" in netloc:
        info, _, hosts = netloc.rpartition("@")
        user, sep, _ = info.partition(":")
        netloc = f"{user}:***@{hosts}" if sep else netloc
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if 'password' in k else quote(v, safe='')}" for k, v in pairs)
    return urlunsplit((scheme, netloc, path, query, fragment))


def same_primary(client: redis.Redis, key: str, other: str) -> bool:
    """Whether one primary serves both keys: always off a cluster; on one, whether their slots
    map to one node. Then a WAIT after a write to ``other`` covers earlier writes to ``key`` too
    (one replication log), and ``confirm_on`` for ``key`` is not needed."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return True
    return bool(client.get_node_from_key(key).name == client.get_node_from_key(other).name)


def confirm_on(
    client: redis.Redis, wait_key: str, replicas: int, timeout_ms: int = REPLICA_WAIT_MS
) -> None:
    """Block until ``replicas`` replicas of the primary holding ``wait_key`` have every write that
    primary took so far, from any connection; NotReplicated if fewer confirm in time. No-op for 0.

    Why a write of its own: WAIT waits for the replication offset the *calling connection* last
    left (Redis 7.0: at its last command of any kind; newer servers: at its last write), so on a
    connection that wrote nothing, or last spoke before the writes to confirm, it confirms nothing
    (tests/test_enrol_cluster_replicas.py shows a WAIT alone passing a stopped replica). So one
    non-transactional pipeline, one connection to that primary, sends ``SET wait_key <ms> EX 60``
    then WAIT (on a cluster the key routes the SET and ``target_nodes`` the keyless WAIT to the
    same node, hence the same connection: redis-py's cluster pipeline opens one per node). The
    primary's replication stream is one ordered log, so a replica that acknowledged the SET holds
    every earlier write of that primary (a gallery written in a WATCHed transaction on another
    pooled connection, say). ``wait_key``: a disposable string key in the slot to confirm, under
    the caller's ACL, that nothing else reads (one extra round trip; the API's eraser does the
    same with asyncio, ``rollcall_api.erasure``)."""
    if replicas <= 0:
        return
    pipe = client.pipeline(transaction=False)
    pipe.set(wait_key, str(int(time.time() * 1000)), ex=WAIT_KEY_TTL_SECONDS)
    target: dict[str, Any] = {}
    if isinstance(client, redis.cluster.RedisCluster):  # the keyless WAIT goes where the SET goes
        target["target_nodes"] = client.get_node_from_key(wait_key)
    pipe.execute_command("WAIT", replicas, timeout_ms, **target)  # type: ignore[no-untyped-call]
    _, acked = pipe.execute()
    if int(acked) < replicas:
        raise NotReplicated(f"{acked} of {replicas} Redis replicas confirmed the write in time")


def _tls_options(target: Target, ca_file: Path | str | None) -> dict[str, Any]:
    """``ssl=True`` plus CA verification for a TLS target; a CA file without TLS is refused."""
    if not target.tls:
        # redistls refuses a CA file with a plain URL; with a TLS URL it adds verification options
        return redistls.client_options("redis://", ca_file)
    return {"ssl": True, **redistls.client_options("rediss://", ca_file)}


def _url_tls(tls: dict[str, Any]) -> dict[str, Any]:
    """For ``from_url``: the rediss:// scheme already picks the TLS connection class, which takes
    no ``ssl`` flag of its own (only the cluster and sentinel clients want it)."""
    return {k: v for k, v in tls.items() if k != "ssl"}


def _auth(username: str | None, password: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("username", username), ("password", password)) if v is not None}


def _sentinel_kwargs(
    target: Target, options: dict[str, Any], tls: dict[str, Any]
) -> dict[str, Any]:
    """Options for the connections to the sentinels: the caller's timeouts, TLS, their own auth."""
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    return {**timeouts, **tls, **_auth(target.sentinel_username, target.sentinel_password)}


def sync_client(url: str, ca_file: Path | str | None = None, **options: Any) -> redis.Redis:
    """A blocking client for ``url`` (any topology); ``options`` are redis-py connection options
    (timeouts, read size) applied to every node.

    Typed as ``redis.Redis``: ``RedisCluster`` is a separate class but serves the same commands
    rollcall sends (the topology tests run each one on a real cluster).
    """
    target = parse(url)
    tls = _tls_options(target, ca_file)
    if target.kind == "single":
        return redis.Redis.from_url(url, **options, **_url_tls(tls))
    auth = _auth(target.username, target.password)
    if target.kind == "cluster":
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
        return cast(
            redis.Redis, redis.cluster.RedisCluster(startup_nodes=nodes, **auth, **options, **tls)
        )
    # redis-py leaves Sentinel and master_for unannotated
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options, tls), **options, **tls
    )
    master = sentinel.master_for(target.service, db=target.db, **auth)  # type: ignore[no-untyped-call]
    return cast(redis.Redis, master)


def resend_retry() -> redis.asyncio.retry.Retry:
    """The retry of ``async_client(..., resend=True)``: connection errors only, once."""
    cap, base = RESEND_BACKOFF
    return redis.asyncio.retry.Retry(
        redis.backoff.ExponentialWithJitterBackoff(cap=cap, base=base),
        RESEND_RETRIES,
        supported_errors=(redis.exceptions.ConnectionError,),
    )


class _SentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """Reconnects to the current master also when a command's retry reconnects (redis-py 8.1
    goes to ``connect_check_health`` there, past the override that asks the sentinels)."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class _SentinelSSLConnection(
    _SentinelConnection, redis.asyncio.sentinel.SentinelManagedSSLConnection
):
    """``_SentinelConnection`` over TLS."""


def async_client(
    url: str, ca_file: Path | str | None = None, *, resend: bool = False, **options: Any
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`sync_client` (API and operator). ``resend``: send a command
    once more after a lost connection (see the module docstring for who may)."""
    target = parse(url)
    tls = _tls_options(target, ca_file)
    if resend and target.kind != "cluster":
        options = {"retry": resend_retry(), **options}
    if target.kind == "single":
        return redis.asyncio.Redis.from_url(url, **options, **_url_tls(tls))
    auth = _auth(target.username, target.password)
    if target.kind == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes]
        client = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **auth, **options, **tls)
        return cast(redis.asyncio.Redis, client)
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options, tls), **options, **tls
    )
    connection: dict[str, Any] = {}
    if resend:
        connection["connection_class"] = (
            _SentinelSSLConnection if target.tls else _SentinelConnection
        )
    master = sentinel.master_for(target.service, db=target.db, **auth, **connection)
    return cast(redis.asyncio.Redis, master)
