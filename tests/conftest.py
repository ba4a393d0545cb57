"""Fixtures for real servers: a Kubernetes control plane and a redis-server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from redisrig import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> Iterator[str]:
    """The URL of the session's redis-server, emptied before each test."""
    client = redis.Redis.from_url(redis_proc.url)
    client.flushall()
    client.close()
    yield redis_proc.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real servers they use, so `-m 'not k8s'` works without bookkeeping."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"redis_url", "redis_client", "redis_proc"}:
            item.add_marker(pytest.mark.redis)


