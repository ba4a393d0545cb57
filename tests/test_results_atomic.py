"""Results appear whole or not at all, even when redis-server is killed mid-write."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redisrig import _wait_ready, free_port
from rollcall_contract import keys, redisclient
from rollcall_job.results import (
    IncompleteResults,
    StagingLost,
    read_results,
    write_results,
)

pytestmark = pytest.mark.redis  # real redis-server processes, some of our own (with AOF)


class DurableRedis:
    """A redis-server with fsync-always AOF, so what it acknowledged survives a SIGKILL."""

    def __init__(self, workdir: Path) -> None:
        self.dir, self.port = workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(self.port, self.proc, log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def client(self) -> redis.Redis:
        # no client-side retries: the write must see the server die, not reconnect to a new one
        return redis.Redis(port=self.port, socket_timeout=10, retry=Retry(NoBackoff(), 0))


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[DurableRedis]:
    server = DurableRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(10)


def _big_result(tag: str, n_photos: int = 3000) -> dict[str, Any]:
    photos = [
        {
            "photo": f"p{i:05d}.jpg",
            "faces": [
                {
                    "student": f"s{i % 40}",
                    "score": 0.3,
                    "box": [1.0, 2.0, 3.0, 4.0],
                    "note": tag * 20,
                }
            ],
        }
        for i in range(n_photos)
    ]
    return {
        "summary": {"tag": tag, "photos": n_photos},
        "attendance": {"present": [f"s{i}" for i in range(40)], "absent": []},
        "photos": photos,
    }


def test_round_trip_and_ttl(redis_client: redis.Redis) -> None:
    doc = _big_result("a", 200)
    key = write_results(
        redis_client, "school-a", "uid", "0", doc, ttl_seconds=300, chunk_bytes=4096
    )
    assert key == keys.job_results("school-a", "uid")
    assert read_results(redis_client, "school-a", "uid") == doc
    assert 0 < redis_client.ttl(key) <= 300
    assert redis_client.keys("*staging*") == []


def test_kill_between_staging_and_rename_publishes_nothing(durable: DurableRedis) -> None:
    client = durable.client()
    doc = _big_result("new")
    with pytest.raises(redis.ConnectionError):
        write_results(
            client,
            "school-a",
            "uid",
            "1",
            doc,
            ttl_seconds=300,
            chunk_bytes=64 * 1024,
            before_publish=durable.kill,
        )
    durable.start()
    client = durable.client()
    # the staged parts did reach disk (so a non-atomic writer would have left them visible)...
    staged = client.hgetall(keys.job_results_staging("school-a", "uid", "1"))
    assert len(staged) > 5
    # ...but the final key was never created
    assert not client.exists(keys.job_results("school-a", "uid"))
    assert read_results(client, "school-a", "uid") is None
    # a retry publishes the whole thing
    write_results(client, "school-a", "uid", "2", doc, ttl_seconds=300, chunk_bytes=64 * 1024)
    assert read_results(client, "school-a", "uid") == doc


def test_kill_in_the_middle_of_staging_keeps_the_previous_result_whole(
    durable: DurableRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = durable.client()
    old = _big_result("old", 500)
    write_results(client, "school-a", "uid", "1", old, ttl_seconds=300, chunk_bytes=8 * 1024)

    writes = 0
    real_hset = redis.Redis.hset

    def dying_hset(self: redis.Redis, *a: Any, **kw: Any) -> Any:
        nonlocal writes
        writes += 1
        if writes == 4:
            durable.kill()
        return real_hset(self, *a, **kw)

    monkeypatch.setattr(redis.Redis, "hset", dying_hset)
    with pytest.raises(redis.ConnectionError):
        write_results(
            client,
            "school-a",
            "uid",
            "2",
            _big_result("new"),
            ttl_seconds=300,
            chunk_bytes=64 * 1024,
        )
    monkeypatch.undo()
    durable.start()
    client = durable.client()
    staging = keys.job_results_staging("school-a", "uid", "2")
    assert client.hlen(staging) == 3
    assert 0 < client.ttl(staging) <= 300  # the leftover expires on its own
    assert read_results(client, "school-a", "uid") == old


def test_reader_detects_a_result_missing_parts(redis_client: redis.Redis) -> None:
    # what a non-atomic writer could leave behind: the reader refuses it instead of guessing
    redis_client.hset(
        keys.job_results("school-a", "uid"), mapping={"parts": '{"photos": 2}', "photos": "[1,"}
    )
    with pytest.raises(IncompleteResults):
        read_results(redis_client, "school-a", "uid")


@pytest.mark.parametrize(
    "lose",
    [
        pytest.param(lambda staged: staged[:2], id="two-fields"),
        pytest.param(lambda staged: staged, id="the-whole-staging-hash"),
    ],
)
def test_staged_fields_lost_before_the_publish_publish_nothing(
    redis_client: redis.Redis, lose: Callable[[list[bytes]], list[bytes]]
) -> None:
    """A failover can drop staging writes the old primary took but had not replicated, while the
    client sends the later ones (and the RENAME) to the promoted node. The publish then finds fewer
    fields than it staged: it raises a TRANSIENT error, the previous result stays whole, and the
    retried attempt publishes everything."""
    old, new = _big_result("old", 50), _big_result("new", 500)
    write_results(redis_client, "school-a", "uid", "1", old, ttl_seconds=300, chunk_bytes=4096)
    staging = keys.job_results_staging("school-a", "uid", "2")

    def failover_lost_some() -> None:
        staged = sorted(cast(list[bytes], redis_client.hkeys(staging)))
        assert len(staged) > 2
        redis_client.hdel(staging, *lose(staged))

    with pytest.raises(StagingLost) as lost:
        write_results(
            redis_client, "school-a", "uid", "2", new,
            ttl_seconds=300, chunk_bytes=4096, before_publish=failover_lost_some,
        )  # fmt: skip
    assert isinstance(lost.value, redisclient.TRANSIENT_ERRORS)  # the job exits TRANSIENT
    assert read_results(redis_client, "school-a", "uid") == old
    write_results(redis_client, "school-a", "uid", "3", new, ttl_seconds=300, chunk_bytes=4096)
    assert read_results(redis_client, "school-a", "uid") == new
