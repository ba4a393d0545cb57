"""Real Redis topologies on loopback for tests: a 3-master Cluster with a replica each, and a
Sentinel group (a master, replicas, three sentinels). Debian ``redis-server`` only (``--sentinel``
makes it a Sentinel, so the ``redis-sentinel`` package is not needed); no persistence.

With ``acl`` set every data node loads that ACL file (default user off) and the rig itself, the
replicas and the sentinels authenticate as ``admin`` — the components use their own users.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from redisrig import RedisServer, free_port, redis_server

SERVICE = "rollcall"  # the sentinel master name the rig monitors


@dataclass(frozen=True)
class Acl:
    """An ACL file's text and the admin credentials the rig (and replication) uses."""

    text: str
    admin: str
    admin_password: str = field(repr=False)


def _userinfo(user: str | None, password: str | None) -> str:
    if user is None:
        return ""
    return f"{quote(user, safe='')}:{quote(password or '', safe='')}@"


def _admin_client(port: int, acl: Acl | None, **kw: object) -> redis.Redis:
    auth = {"username": acl.admin, "password": acl.admin_password} if acl else {}
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, **auth, **kw)  # type: ignore[arg-type]


def _data_config(workdir: Path, acl: Acl | None, extra: str = "") -> str:
    """redis.conf lines for a data node: the ACL file, and replication as admin."""
    # replicas sync at once (the default waits 5 s for more replicas to share one transfer)
    lines = [extra, "repl-diskless-sync-delay 0"]
    if acl is not None:
        aclfile = workdir / "users.acl"
        workdir.mkdir(parents=True, exist_ok=True)
        aclfile.write_text(acl.text)
        lines += [
            f"aclfile {aclfile}",
            f"masteruser {acl.admin}",
            f"masterauth {acl.admin_password}",
        ]
    return "\n".join(lines) + "\n"


def _wait(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what} (last error: {last!r})")


# --- Cluster ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[RedisServer, ...]
    acl: Acl | None

    def url(self, user: str | None = None, password: str | None = None, *, seeds: int = 3) -> str:
        """``redis+cluster://`` with the first ``seeds`` nodes as startup nodes."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:seeds])
        return f"redis+cluster://{_userinfo(user, password)}{hosts}"

    def admin(self, port: int) -> redis.Redis:
        """A plain client on one node as admin (CLUSTER commands, per-node checks)."""
        return _admin_client(port, self.acl)

    def primaries(self) -> dict[str, int]:
        """Node id -> port of every primary, from the cluster's own view."""
        with self.admin(self._live().port) as c:
            nodes = c.cluster("NODES")  # "host:port" -> {"node_id", "flags", ...}
        return {
            str(n["node_id"]): int(addr.rsplit(":", 1)[1])
            for addr, n in nodes.items()
            if "master" in str(n["flags"]).split(",")
        }

    def port_of_slot(self, slot: int) -> int:
        """The port of the primary serving ``slot`` (CLUSTER SLOTS)."""
        with self.admin(self._live().port) as c:
            for start, end, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        raise LookupError(f"slot {slot} is not served")

    def kill(self, port: int) -> None:
        """SIGKILL one node's process (no shutdown, no last write)."""
        node = next(n for n in self.nodes if n.port == port)
        node.process.kill()
        node.process.wait()

    def _live(self) -> RedisServer:
        return next(n for n in self.nodes if n.process.poll() is None)

    def keyslot(self, key: str) -> int:
        with self.admin(self._live().port) as c:
            return int(c.execute_command("CLUSTER KEYSLOT", key))


def _cluster_ok(cluster: Cluster) -> bool:
    for node in cluster.nodes:
        with cluster.admin(node.port) as c:
            info = c.cluster("INFO")
            nodes = c.cluster("NODES").values()
            replication = c.info("replication")
        if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != 6:
            return False
        roles = [str(n["flags"]).split(",") for n in nodes]
        if sum("slave" in r for r in roles) != 3 or sum("master" in r for r in roles) != 3:
            return False  # CLUSTER REPLICATE has not reached this node by gossip yet
        if replication["role"] == "slave" and replication.get("master_link_status") != "up":
            return False  # a replica that never synced refuses to fail over
    return True


@contextlib.contextmanager
def redis_cluster(workdir: Path, acl: Acl | None = None) -> Iterator[Cluster]:
    """Six cluster-mode servers joined by ``redis-cli --cluster create --cluster-replicas 1``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli not found: install the Debian package redis-tools")
    config = "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n"
    with contextlib.ExitStack() as stack:
        nodes = tuple(
            stack.enter_context(
                redis_server(
                    workdir / f"node{i}",
                    _data_config(workdir / f"node{i}", acl, config),
                    # the bus port defaults to port + 10000, out of range for high free ports
                    ["--cluster-port", str(free_port())],
                )
            )
            for i in range(6)
        )
        auth = ["--user", acl.admin, "--pass", acl.admin_password] if acl else []
        subprocess.run(
            [
                cli,
                *auth,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        cluster = Cluster(nodes, acl)
        _wait("the cluster to agree (cluster_state:ok on every node)", lambda: _cluster_ok(cluster))
        yield cluster


# --- Sentinel ---------------------------------------------------------------------------------


@dataclass
class SentinelGroup:
    master: RedisServer
    replicas: tuple[RedisServer, ...]
    sentinels: tuple[RedisServer, ...]
    acl: Acl | None
    killed: list[RedisServer] = field(default_factory=list)

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{_userinfo(user, password)}{hosts}/{SERVICE}/{db}"

    def master_port(self) -> int:
        """Where the sentinels say the master is now."""
        with redis.Redis(host="127.0.0.1", port=self.sentinels[0].port, socket_timeout=5) as s:
            _, port = s.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def data_nodes(self) -> tuple[RedisServer, ...]:
        return (self.master, *self.replicas)

    def kill_master(self) -> int:
        """SIGKILL the process of the current master (no shutdown, no last write); its port."""
        port = self.master_port()
        node = next(n for n in self.data_nodes() if n.port == port)
        node.process.kill()
        node.process.wait()
        self.killed.append(node)
        return port

    def wait_promoted(self, old_port: int, timeout: float = 30) -> int:
        """Block until the sentinels name a live master other than ``old_port``; its port."""
        _wait(
            "a replica to be promoted",
            lambda: self.master_port() != old_port and self._is_master(self.master_port()),
            timeout,
        )
        return self.master_port()

    def _is_master(self, port: int) -> bool:
        with _admin_client(port, self.acl) as c:
            return bool(c.execute_command("ROLE")[0] == b"master")


def _sentinel_config(master_port: int, sentinels: int, acl: Acl | None) -> str:
    quorum = sentinels // 2 + 1
    lines = [
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}",
        f"sentinel down-after-milliseconds {SERVICE} 1000",
        f"sentinel failover-timeout {SERVICE} 5000",
        f"sentinel parallel-syncs {SERVICE} 1",
    ]
    if acl is not None:
        lines += [
            f"sentinel auth-user {SERVICE} {acl.admin}",
            f"sentinel auth-pass {SERVICE} {acl.admin_password}",
        ]
    return "\n".join(lines) + "\n"


def _replicas_online(master_port: int, acl: Acl | None, want: int) -> bool:
    with _admin_client(master_port, acl) as c:
        info = c.info("replication")
    online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return len([v for v in online if v.get("state") == "online"]) >= want


def _sentinels_see(group: SentinelGroup, replicas: int) -> bool:
    for s in group.sentinels:
        with redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=5) as c:
            info = c.sentinel_master(SERVICE)
            if int(info["num-slaves"]) < replicas:
                return False
            if int(info["num-other-sentinels"]) < len(group.sentinels) - 1:
                return False
    return True


@contextlib.contextmanager
def sentinel_group(
    workdir: Path, *, replicas: int = 2, sentinels: int = 3, acl: Acl | None = None
) -> Iterator[SentinelGroup]:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels that all know each other."""
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(redis_server(workdir / "m", _data_config(workdir / "m", acl)))
        reps: list[RedisServer] = []
        for i in range(replicas):
            d = workdir / f"r{i}"
            conf = _data_config(d, acl, f"replicaof 127.0.0.1 {master.port}")
            reps.append(stack.enter_context(redis_server(d, conf)))
        _wait("replicas to sync", lambda: _replicas_online(master.port, acl, replicas))
        sents: list[RedisServer] = []
        for i in range(sentinels):
            conf = _sentinel_config(master.port, sentinels, acl)
            sents.append(stack.enter_context(redis_server(workdir / f"s{i}", conf, ["--sentinel"])))
        group = SentinelGroup(master, tuple(reps), tuple(sents), acl)
        _wait("sentinels to find replicas and each other", lambda: _sentinels_see(group, replicas))
        yield group
