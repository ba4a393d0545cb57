"""A Sentinel group whose one replica replicates through a relay the test controls.

Real servers only: a master, one replica and three sentinels (quorum 2), all ``redis-server``
processes loading the components' ACL users (hack/redistopo.py's Sentinel rig), except that the
replica's ``replicaof`` names a ``replicarig.Relay`` in front of the master: the test can hold
what the master sends (its acknowledgements still flow) and cut it. The master lists the replica
under the replica's own port (REPLCONF listening-port), so the sentinels find, watch and can
promote the real replica, not the relay.

Why the replica refuses ``REPLICAOF host port`` from the sentinels: a sentinel "fixes" a
replica whose reported master (here the relay's port) is not the monitored master's address
once the replica has been known for ``failover-timeout`` (``+fix-slave-config``: it sends
``REPLICAOF <master>`` and the relay is bypassed). A longer timeout only moved the race (a test
slowed past it on a loaded CI machine failed "the relay was bypassed"), so on the replica alone
the admin user (the one the sentinels log in as) may send ``REPLICAOF``/``SLAVEOF`` only with
``NO ONE``: the fix's transaction aborts, the promotion still works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from redisrig import RedisServer, redis_server
from redistopo import (
    SERVICE,
    Acl,
    SentinelGroup,
    _admin_client,
    _data_config,
    _replicas_online,
    _sentinels_see,
    _wait,
)
from replicarig import Relay

# as hack/redistopo.py: an election lost to a split vote is retried after 2 x this
FAILOVER_TIMEOUT_MS = 5_000


@dataclass
class RelayedGroup:
    """The Sentinel group (``group``: URL, kill the master, wait for a promotion) and the relay
    on its replica's link."""

    group: SentinelGroup
    relay: Relay

    @property
    def replica(self) -> RedisServer:
        return self.group.replicas[0]

    def admin(self, server: RedisServer) -> redis.Redis:
        """A plain client on one data node as admin (read what that node itself holds)."""
        return _admin_client(server.port, self.group.acl)

    def replica_master_port(self) -> int:
        """The master port the replica itself reports (the relay's while the relay is in use)."""
        with self.admin(self.replica) as c:
            return int(c.info("replication")["master_port"])


def _sentinel_config(master_port: int, acl: Acl) -> str:
    return (
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
        f"sentinel auth-user {SERVICE} {acl.admin}\n"
        f"sentinel auth-pass {SERVICE} {acl.admin_password}\n"
    )


def _sentinels_know(group: SentinelGroup, replica_port: int) -> bool:
    """Every sentinel lists the real replica (not the relay) as a replica of the master."""
    if not _sentinels_see(group, 1):
        return False
    for s in group.sentinels:
        with redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=5) as c:
            ports = {int(r["port"]) for r in c.sentinel_slaves(SERVICE)}
        if replica_port not in ports:
            return False
    return True


def _refuse_repointing(replica_port: int, acl: Acl) -> None:
    """Let the admin user on this one node run ``REPLICAOF NO ONE`` (a promotion) but not
    ``REPLICAOF host port`` (a sentinel's +fix-slave-config, which would bypass the relay)."""
    with _admin_client(replica_port, acl) as c:
        c.execute_command(
            "ACL", "SETUSER", acl.admin, "-slaveof", "-replicaof", "+slaveof|no", "+replicaof|no"
        )


@contextlib.contextmanager
def relayed_sentinel_group(workdir: Path, acl: Acl) -> Iterator[RelayedGroup]:
    """A master, one replica behind a relay, three sentinels that know both and each other."""
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(redis_server(workdir / "m", _data_config(workdir / "m", acl)))
        relay = Relay(master.port)
        stack.callback(relay.cut)
        conf = _data_config(workdir / "r", acl, f"replicaof 127.0.0.1 {relay.port}")
        replica = stack.enter_context(redis_server(workdir / "r", conf))
        _refuse_repointing(replica.port, acl)
        _wait(
            "the replica to sync through the relay", lambda: _replicas_online(master.port, acl, 1)
        )
        sentinels = tuple(
            stack.enter_context(
                redis_server(workdir / f"s{i}", _sentinel_config(master.port, acl), ["--sentinel"])
            )
            for i in range(3)
        )
        group = SentinelGroup(master, (replica,), sentinels, acl)
        _wait("the sentinels to know the replica", lambda: _sentinels_know(group, replica.port))
        yield RelayedGroup(group, relay)
