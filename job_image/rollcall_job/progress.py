"""Progress (done/total photos) at a bounded rate: to Redis for the operator, to the log for people.

The operator copies ``keys.job_progress`` into the RecognitionJob's status; writing it for every
photo would turn a 2,000-photo job into 2,000 status patches. ``Progress`` writes at most once per
interval (the first step and the last always), using an injectable clock so the rate logic is tested
without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from rollcall_contract import keys

Sink = Callable[[int, int], None]
log = logging.getLogger("rollcall_job.progress")


class Progress:
    def __init__(
        self,
        total: int,
        sinks: list[Sink],
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done = total, 0
        self.sinks, self.interval, self.clock = sinks, interval, clock
        self._last: float | None = None
        self._last_written: tuple[int, int] | None = None
        self.writes = 0

    def start(self) -> None:
        self._emit()

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        now = self.clock()
        if self.done >= self.total or self._last is None or now - self._last >= self.interval:
            self._emit(now)

    def finish(self) -> None:
        """The final write, whatever the rate limit (skipped if it would repeat the last one)."""
        if self._last_written != (self.done, self.total):
            self._emit()

    def _emit(self, now: float | None = None) -> None:
        self._last = self.clock() if now is None else now
        self._last_written = (self.done, self.total)
        self.writes += 1
        for sink in self.sinks:
            sink(self.done, self.total)


def redis_sink(client: redis.Redis, tenant: str, job_uid: str, ttl_seconds: int) -> Sink:
    """Write done/total/updated to the job's progress hash (one pipelined round trip).

    Progress is advisory: a failed write is logged and skipped, not fatal; the results write at
    the end is what must succeed (and fails the job as TRANSIENT if Redis is really gone).
    """
    key = keys.job_progress(tenant, job_uid)

    def write(done: int, total: int) -> None:
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, mapping={"done": done, "total": total, "updated": f"{time.time():.3f}"})
        pipe.expire(key, ttl_seconds)
        try:
            pipe.execute()
        except redis.RedisError as e:
            log.warning("progress write failed: %s", type(e).__name__)

    return write


def log_sink(logger: logging.Logger = log) -> Sink:
    """A human line per write (``progress 40/120 photos (33%)``): what ``kubectl logs`` shows."""

    def write(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        logger.info(
            "progress %d/%d photos (%d%%)", done, total, pct, extra={"done": done, "total": total}
        )

    return write
