"""Progress is written at a bounded rate, always including the first and the final state."""

from __future__ import annotations

import logging

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redisrig import free_port
from rollcall_contract import keys
from rollcall_job.progress import Progress, log_sink, redis_sink


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("steps", "interval", "want"),
    [
        # one photo every 0.25 s, interval 1 s: first write, then every 4th, and the last
        ([0.25] * 10, 1.0, [(0, 10), (4, 10), (8, 10), (10, 10)]),
        # slow photos: every one written
        ([2.0] * 3, 1.0, [(0, 3), (1, 3), (2, 3), (3, 3)]),
        # all at once: first and last only
        ([0.0] * 5, 1.0, [(0, 5), (5, 5)]),
    ],
)
def test_writes_are_rate_limited(
    steps: list[float], interval: float, want: list[tuple[int, int]]
) -> None:
    clock, seen = FakeClock(), []
    p = Progress(len(steps), [lambda d, t: seen.append((d, t))], interval=interval, clock=clock)
    p.start()
    for dt in steps:
        clock.t += dt
        p.advance()
    p.finish()
    assert seen == want


def test_finish_writes_a_final_state_reached_between_writes() -> None:
    clock, seen = FakeClock(), []
    p = Progress(10, [lambda d, t: seen.append((d, t))], interval=5.0, clock=clock)
    p.start()
    for _ in range(4):
        clock.t += 0.1
        p.advance()
    p.finish()  # a job stopping early (or errors skipped) still reports where it got to
    assert seen == [(0, 10), (4, 10)]


def test_redis_and_log_sinks(redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    p = Progress(4, [redis_sink(redis_client, "school-a", "uid-1", 60), log_sink()], interval=0.0)
    p.start()
    p.advance(3)
    stored = redis_client.hgetall(keys.job_progress("school-a", "uid-1"))
    assert (stored[b"done"], stored[b"total"]) == (b"3", b"4")
    assert 0 < redis_client.ttl(keys.job_progress("school-a", "uid-1")) <= 60
    assert "progress 3/4 photos (75%)" in caplog.text


def test_a_failed_progress_write_does_not_stop_the_job(caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    p = Progress(2, [redis_sink(dead, "school-a", "uid-1", 60)], interval=0.0)
    p.start()
    p.advance(2)
    assert p.done == 2 and "progress write failed" in caplog.text
