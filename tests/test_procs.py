"""Starting a rig's component again when ``free_port()`` lost its port to another process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redisrig
from procs import bind_failed, retry_on_bind_failure
from redisrig import free_port, redis_server


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # etcd, kube-apiserver and redis-server, as they log a taken port
        ('{"level":"fatal","msg":"listen tcp 127.0.0.1:2379: bind: address already in use"}', True),
        ("E1202 failed to listen on 127.0.0.1:6443: bind: address already in use", True),
        ("# Warning: Could not create server TCP listening socket 127.0.0.1:6379: bind: "
         "Address already in use", True),
        ("etcd exited with 1 during start-up", False),
        ("open /etc/kueue/metrics/certs/tls.crt: no such file or directory", False),
    ],
)  # fmt: skip
def test_a_bind_failure_is_told_from_other_start_up_failures(line: str, expected: bool) -> None:
    assert bind_failed(line) is expected


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on, as after a lost free_port() race."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_redis_started_on_a_taken_port_starts_again_on_a_fresh_one(
    taken_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([taken_port, free_port()])
    monkeypatch.setattr(redisrig, "free_port", lambda: next(ports))
    with redis_server(tmp_path) as server:
        assert server.port != taken_port
        conn = redis.Redis.from_url(server.url)
        assert conn.ping()
        conn.close()
    assert bind_failed((tmp_path / "redis.log").read_text())  # the first try did fail to bind


def test_other_start_failures_are_not_retried(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    calls: list[int] = []

    def start() -> None:
        calls.append(1)
        log.write_text("x exited with 1: bad flag\n")
        raise RuntimeError("x exited with 1 during start-up")

    with pytest.raises(RuntimeError, match="during start-up"):
        retry_on_bind_failure(start, log)
    assert len(calls) == 1


def test_bind_failures_are_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    calls: list[int] = []

    def start() -> None:
        calls.append(1)
        with log.open("a") as f:
            f.write("bind: address already in use\n")
        raise RuntimeError("x exited with 1 during start-up")

    with pytest.raises(RuntimeError):
        retry_on_bind_failure(start, log, attempts=3)
    assert len(calls) == 3
