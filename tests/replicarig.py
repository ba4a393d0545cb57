"""A Redis primary and one replica behind a relay the test controls, for the erase tests.

Real servers only: two ``redis-server`` processes loading the components' ACL users (admin, API),
the replica replicating through a TCP relay that can hold what the primary sends (like a slow
network) or cut it (like a primary that dies before its replica got the write); ``stopped``
SIGSTOPs a server (connected, answering nothing). Shared by tests/test_erase_replicas.py (the
API's WAIT) and tests/test_cli_erase_wait.py (the CLI waiting out a 503).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from redisrig import RedisServer, redis_server
from rollcall_contract import acl


class Relay:
    """A TCP relay on the replica's replication link: ``hold`` keeps what the primary sends from
    the replica (its acknowledgements still flow), ``release`` delivers it, ``cut`` drops it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open = threading.Event()  # cleared: hold what flows to the replica
        self.open.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    def cut(self) -> None:
        """Drop the link and whatever it holds, as a primary that dies before sending it. The
        listener is shut down first: closing it alone does not wake a thread blocked in
        ``accept``, which then took the replica's reconnect after the cut."""
        self.closed.set()
        self.open.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        for s in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                replica, _ = self.listener.accept()
            except OSError:
                return
            if self.closed.is_set():
                replica.close()
                return
            try:
                primary = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the primary is gone: the replica sees a dropped link, as it would
                replica.close()
                continue
            self.sockets += [replica, primary]
            threading.Thread(target=self._pump, args=(primary, replica, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(replica, primary, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, holdable: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                while holdable and not self.open.wait(0.01):
                    pass
                if self.closed.is_set():
                    return
                dst.sendall(data)


@dataclass
class Pair:
    primary: RedisServer
    replica: RedisServer
    relay: Relay
    passwords: dict[str, str]

    def url(self, user: str, port: int | None = None) -> str:
        password = quote(self.passwords[user], safe="")
        return f"redis://{user}:{password}@127.0.0.1:{port or self.primary.port}/0"

    def admin(self, server: RedisServer) -> redis.Redis:
        return redis.Redis.from_url(self.url(acl.ADMIN_USER, server.port), socket_timeout=10)


def _online(admin: redis.Redis) -> bool:
    info = admin.info("replication")
    return bool(info.get("slave0", {}).get("state") == "online")


def until(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def replica_pair(tmp_path: Path) -> Iterator[Pair]:
    """A primary and one replica, both loading the components' ACL users (admin, API)."""
    passwords = {u: secrets.token_urlsafe(18) for u in (acl.ADMIN_USER, acl.API_USER)}
    users = [
        (acl.ADMIN_USER, acl.admin_rules(), passwords[acl.ADMIN_USER]),
        (acl.API_USER, acl.api_rules(), passwords[acl.API_USER]),
    ]
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(acl.acl_file(users))
    base = f"aclfile {aclfile}\nrepl-diskless-sync-delay 0\n"
    with redis_server(tmp_path / "primary", base) as primary:
        relay = Relay(primary.port)
        auth = f"masteruser {acl.ADMIN_USER}\nmasterauth {passwords[acl.ADMIN_USER]}\n"
        conf = f"{base}{auth}replicaof 127.0.0.1 {relay.port}\n"
        try:
            with redis_server(tmp_path / "replica", conf) as replica:
                rig = Pair(primary, replica, relay, passwords)
                with rig.admin(primary) as admin:
                    until("the replica to sync", lambda: _online(admin))
                try:
                    yield rig
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(replica.process.pid, signal.SIGCONT)
        finally:
            relay.cut()


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server's process stopped (SIGSTOP): connected, answering nothing."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
