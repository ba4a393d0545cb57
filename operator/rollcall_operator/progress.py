"""Progress of running RJs, copied from the counters their jobs keep in Redis.

One pipelined round trip per interval reads every running RJ's done/total; only the RJs whose
counters moved cost a status write. Redis being away costs a warning, never a crash of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from rollcall_contract import keys
from rollcall_contract.model import Phase
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.kube import ApiException
from rollcall_operator.status import progress_patch
from rollcall_operator.statuswrite import StatusWriter

log = logging.getLogger("rollcall.operator")

Counters = Sequence[bytes | str | int | None]


def moved(rjs: Sequence[CachedRJ], rows: Sequence[Counters]) -> list[tuple[CachedRJ, int, int]]:
    """(rj, done, total) for each RJ whose Redis counters differ from its status' progress.

    ``rows`` are the HMGET answers (done, total) in the order of ``rjs``; a job that has not
    written both counters yet is skipped.
    """
    out = []
    for rj, (done, total) in zip(rjs, rows, strict=True):
        if done is None or total is None:
            continue
        if progress_patch(rj.status, int(done), int(total)) is not None:
            out.append((rj, int(done), int(total)))
    return out


def _patch(done: int, total: int, current: Mapping[str, Any]) -> dict[str, Any] | None:
    return progress_patch(current, done, total)


class ProgressCopier:
    def __init__(
        self, interval: float, redis: aioredis.Redis, cache: RJCache, writer: StatusWriter
    ) -> None:
        self.interval = interval
        self.redis = redis
        self.cache = cache
        self.writer = writer

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.once()

    async def once(self) -> None:
        running = self.cache.in_phase(Phase.RUNNING)
        if not running:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for rj in running:
                pipe.hmget(keys.job_progress(rj.namespace, rj.uid), "done", "total")
            rows = await pipe.execute()
        except Exception as e:
            log.warning("reading progress from Redis failed: %s", e)
            return
        for rj, done, total in moved(running, rows):
            # recomputed from the status at write time: the RJ may have finished meanwhile
            with contextlib.suppress(ApiException):
                await self.writer.write(rj, functools.partial(_patch, done, total))
