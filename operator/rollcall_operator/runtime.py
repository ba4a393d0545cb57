"""The operator's long-lived parts, wired together; kopf handlers (handlers.py) call into it.

One ``Runtime`` per process, made in the startup handler and kept in kopf's ``memo``. It owns the
clients and the background tasks; each concern lives in its own module:

- ``cache``: the RJs as last seen, specs parsed through the contract model;
- ``statuswrite``: conditional status writes (re-read and recompute on conflict);
- ``admission``: the GPU queue and the task that turns admitted RJs into Jobs;
- ``folding``: Job and pod state folded into RJ status, coalesced per Job;
- ``progress``: done/total copied from Redis for running RJs;
- ``delivery``: completion webhooks.

All durable state is in the apiserver; after a restart ``seed`` rebuilds the queue from Jobs and RJs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from rollcall_contract import redisclient
from rollcall_operator.admission import Admission
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.delivery import Deliveries
from rollcall_operator.folding import Folder
from rollcall_operator.kube import Kube
from rollcall_operator.progress import ProgressCopier
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.statuswrite import StatusWriter


class Runtime:
    def __init__(self, settings: OperatorSettings, kube: Kube, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.kube = kube
        self.redis = redis
        self.cache = RJCache()
        self.status = StatusWriter(kube, self.cache, on_written=self._written)
        self.deliveries = Deliveries(settings, kube, self.cache, self.status)
        self.folding = Folder(kube, self.cache, self.status, job_ended=self._job_ended)
        self.admission = Admission(settings, kube, self.cache, self.status, self.folding.fold)
        self.progress = ProgressCopier(
            settings.progress_interval_seconds, redis, self.cache, self.status
        )
        self.tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, settings: OperatorSettings) -> Runtime:
        kube = await Kube.open(settings)
        redis = redisclient.async_client(
            settings.redis_url, settings.redis_ca_file, socket_timeout=5
        )
        return cls(settings, kube, redis)

    def start(self) -> None:
        self.deliveries.start()
        for coro, name in (
            (self.admission.loop(), "rollcall-admission"),
            (self.progress.run(), "rollcall-progress"),
            (self.folding.kueue_loop(), "rollcall-kueue"),
        ):
            self.tasks.append(asyncio.create_task(coro, name=name))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.admission.close()
        await self.folding.close()
        await self.deliveries.close()
        await self.redis.aclose()
        await self.kube.close()

    async def seed(self) -> None:
        await self.admission.seed()

    # --- what the watches report (handlers.py) ----------------------------------------------------
    async def rj_seen(self, body: Mapping[str, Any]) -> None:
        """An RJ event: keep the cache, admit it once, deliver its webhook, follow its suspend."""
        rj = self.cache.remember(body)
        await self.admission.admit(rj)
        self.deliveries.maybe_deliver(rj)
        await self.admission.track_suspend(rj)

    def rj_gone(self, uid: str) -> None:
        self.cache.forget(uid)
        self.admission.forget(uid)
        self.deliveries.cancel(uid)

    def job_seen(self, job: Mapping[str, Any], deleted: bool = False) -> None:
        self.folding.fold(job, deleted)

    def pod_seen(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        self.folding.pod_seen(pod, deleted)

    # --- between the parts ------------------------------------------------------------------------
    def _written(self, rj: CachedRJ) -> None:
        self.deliveries.maybe_deliver(rj)

    def _job_ended(self, rj_uid: str) -> None:
        self.admission.job_ended(rj_uid)
