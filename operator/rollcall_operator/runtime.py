"""The operator's long-lived parts, wired together; kopf handlers (handlers.py) call into it.

One ``Runtime`` per process, made in the startup handler and kept in kopf's ``memo``. It owns the
clients and the background tasks; each concern lives in its own module:

- ``cache``: the RJs as last seen, specs parsed through the contract model;
- ``statuswrite``: conditional status writes (re-read and recompute on conflict);
- ``admission``: the GPU queue and the task that turns admitted RJs into Jobs;
- ``folding``: Job and pod state folded into RJ status, coalesced per Job;
- ``progress``: done/total copied from Redis for running RJs;
- ``delivery``: completion webhooks;
- ``nodeloss``: pods stranded on an unreachable node, failed so that their Job retries.

All durable state is in the apiserver; after a restart ``seed`` rebuilds the queue from Jobs and RJs.

With kopf peering (``operator.replicas > 1``) only the active replica (``activity.py``) seeds, runs
the loops, folds, delivers, follows stranded pods and writes; a stand-by follows the peering object
every lifetime/3 and re-seeds from the apiserver each time it becomes active, since its cache and
queue went stale and the events of the meantime went to the replica that was active then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from rollcall_contract import redisclient
from rollcall_operator import metrics
from rollcall_operator.activity import Peering, is_active
from rollcall_operator.admission import MANAGED_LABEL_SELECTOR, Admission
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.delivery import Deliveries
from rollcall_operator.folding import Folder
from rollcall_operator.kube import ApiException, Kube
from rollcall_operator.nodeloss import RECHECK_SECONDS, LostPods
from rollcall_operator.progress import ProgressCopier
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.statuswrite import StatusWriter

log = logging.getLogger("rollcall.operator")


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
        self.lost = LostPods(kube, settings.lost_pod_timeout_seconds)
        self.tasks: list[asyncio.Task[None]] = []  # the loops, while active
        self.peering: Peering | None = None
        self.active = False
        self.known = False  # whether the first check has decided
        self.lock = asyncio.Lock()  # one check-and-switch at a time
        self.checked_at = 0.0  # time.monotonic() when the last check began
        self.follower: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: OperatorSettings) -> Runtime:
        kube = await Kube.open(settings)
        # only progress reads: safe to resend after a lost connection
        redis = redisclient.async_client(
            settings.redis_url, settings.redis_ca_file, resend=True, socket_timeout=5
        )
        return cls(settings, kube, redis)

    async def start(self, peering: Peering | None) -> None:
        """Become active now if this replica is (standalone: always), then follow the peering."""
        self.peering = peering
        self.deliveries.start()
        await self.settle()
        if peering is not None:
            self.follower = asyncio.create_task(self._follow(peering), name="rollcall-peering")

    async def close(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            await asyncio.gather(self.follower, return_exceptions=True)
        await self._stop_loops()
        await self.lost.close()
        await self.admission.close()
        await self.folding.close()
        await self.deliveries.close()
        await self.redis.aclose()
        await self.kube.close()

    # --- active or standing by --------------------------------------------------------------------
    async def _follow(self, peering: Peering) -> None:
        """Re-check every lifetime/3 (an RJ event reaching a stand-by checks at once)."""
        while True:
            await asyncio.sleep(peering.poll_seconds)
            try:
                await self.settle()
            except Exception:
                log.exception("following the peering failed; retrying")

    async def settle(self, asked: float | None = None) -> bool:
        """Check whether this replica is active and switch to it; True when active.

        With ``asked`` (a ``time.monotonic()``), a check that began since then is answer enough.
        """
        async with self.lock:
            if asked is not None and self.checked_at >= asked:
                return self.active
            self.checked_at = time.monotonic()
            active = await self._check()
            if active is None:
                return self.active  # the apiserver did not answer: keep the current state
            if active and not self.active:
                await self._activate()
            elif not active and (self.active or not self.known):
                await self._stand_by()
            return self.active

    async def _check(self) -> bool | None:
        """kopf's rule on every peering object this replica registers in; None: unknown."""
        if self.peering is None:
            return True
        p = self.peering
        try:
            statuses = [
                (body or {}).get("status")
                for body in [
                    await self.kube.read_peering(ns, p.name) for ns in p.namespaces or [None]
                ]
            ]
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("reading the peering %s failed: %s", p.name, getattr(e, "status", e))
            return None
        now = dt.datetime.now(dt.UTC)
        return all(is_active(status, p.identity, p.priority, now) for status in statuses)

    async def _activate(self) -> None:
        """Start afresh from the apiserver (as a new process would), then run the loops."""
        self.cache.clear()
        self.admission.reset()
        await self.admission.seed()
        self.active = self.known = True
        metrics.ACTIVE.set(1)
        log.info("peering: active (%s)", self.peering.identity if self.peering else "standalone")
        for coro, name in (
            (self.admission.loop(), "rollcall-admission"),
            (self.progress.run(), "rollcall-progress"),
            (self.folding.kueue_loop(), "rollcall-kueue"),
            (self._find_lost_pods(), "rollcall-lost-pods"),
        ):
            self.tasks.append(asyncio.create_task(coro, name=name))

    async def _find_lost_pods(self) -> None:
        """Follow our pods already stranded: their events went to the replica active then.

        Listed once, after ``active`` is set, so a pod event dropped before then is older than
        the list; ``LostPods.seen`` follows a pod once, whether the list or an event brings it.
        """
        if self.lost.timeout is None:
            return
        scopes: list[str | None] = [*self.settings.namespaces] or [None]
        while True:
            try:
                pods = [
                    pod
                    for scope in scopes
                    for pod in await self.kube.list_pods(scope, MANAGED_LABEL_SELECTOR)
                ]
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("listing pods for stranded ones failed: %s", getattr(e, "status", e))
                await asyncio.sleep(RECHECK_SECONDS)
                continue
            for pod in pods:
                self.lost.seen(pod)
            return

    async def _stand_by(self) -> None:
        """Issue no more writes: stop the loops, Job creations, stranded pods' followers and
        webhook deliveries."""
        self.active, self.known = False, True
        metrics.ACTIVE.set(0)
        log.info("peering: standby (%s)", self.peering.identity if self.peering else "")
        await self._stop_loops()
        await self.lost.close()
        await self.admission.close()
        await self.deliveries.cancel_all()
        self.admission.seeded.clear()

    async def _stop_loops(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    # --- what the watches report (handlers.py) ----------------------------------------------------
    async def rj_seen(self, body: Mapping[str, Any]) -> None:
        """An RJ event: keep the cache, admit it once, deliver its webhook, follow its suspend.

        kopf delivers events only to the replica it deems active, but its peering and ours are
        read apart: on a stand-by, check now; if still standing by, drop it (kopf re-lists every
        RJ when it resumes this replica).
        """
        if not self.active and not await self.settle(time.monotonic()):
            return
        rj = self.cache.remember(body)
        await self.admission.admit(rj)
        self.deliveries.maybe_deliver(rj)
        await self.admission.track_suspend(rj)

    def rj_gone(self, uid: str) -> None:
        self.cache.forget(uid)
        self.admission.forget(uid)
        self.deliveries.cancel(uid)

    def job_seen(self, job: Mapping[str, Any], deleted: bool = False) -> None:
        """Fold a Job event; a stand-by drops it (on activation, admitting the re-listed RJs
        reads and folds their Jobs)."""
        if self.active:
            self.folding.fold(job, deleted)

    def pod_seen(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        """Fold the pod's scheduling verdict and follow it if stranded; a stand-by drops it
        (failing a stranded pod is a write; on activation the pods are listed again)."""
        if self.active:
            self.folding.pod_seen(pod, deleted)
            self.lost.seen(pod, deleted)

    # --- between the parts ------------------------------------------------------------------------
    def _written(self, rj: CachedRJ) -> None:
        if self.active:
            self.deliveries.maybe_deliver(rj)

    def _job_ended(self, rj_uid: str) -> None:
        self.admission.job_ended(rj_uid)
