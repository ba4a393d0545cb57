"""Admission: from an RJ's first event to its one Job, behind the GPU caps of ``queue.py``.

- ``seed`` rebuilds the queue from the apiserver after a (re)start: unfinished Jobs hold slots,
  Job-less RJs wait;
- ``admit`` (first event of an RJ in this process) validates the spec through the contract model
  and the operator's per-job bounds, then queues the RJ or re-attaches it to the Job a previous run
  made. It writes nothing to the RJ on the happy path (no kopf annotations): one write fewer per RJ;
- one task (``loop``) turns admitted entries into Jobs: get-or-create by the deterministic name, so
  a repeated or concurrent create meets 409 AlreadyExists, never a twin;
- ``track_suspend`` applies changes of ``spec.runPolicy.suspend`` to the queue entry or the Job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import aiohttp

from rollcall_contract.model import Phase
from rollcall_operator import jobs, metrics, refusals, webhook
from rollcall_operator.builder import LABEL_MANAGED_BY, MANAGED_BY, build_job, job_name
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.kube import ApiException, Kube
from rollcall_operator.quantities import over_bounds
from rollcall_operator.queue import AdmissionQueue, Entry, entry_for, job_slot
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.statuswrite import StatusWriter
from rollcall_operator.times import now_iso

log = logging.getLogger("rollcall.operator")
MANAGED_LABEL_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
READMIT_SECONDS = 5.0
_CREATE_RETRY_SECONDS = 2.0


def seed_action(entry: Entry, job: Mapping[str, Any] | None, kueue: bool) -> Literal[
    "hold", "submit", None
]:  # fmt: skip
    """What a restart makes of an unfinished RJ: hold a slot for its Job, queue it, or neither.

    Neither: its Job is finished (nothing to hold), is not capped, or was suspended by the RJ.
    """
    if job is None:
        return "submit"
    if not entry.capped or jobs.finished(job):
        return None
    use = job_slot(entry, jobs.suspended(job), kueue)
    return "hold" if use == "hold" else "submit" if use == "wait" else None


def queued_extra(rj: CachedRJ | None) -> dict[str, Any]:
    """``queuedTime`` is stamped by the first Queued write only."""
    return {} if rj is not None and rj.queued_time else {"queuedTime": now_iso()}


class Admission:
    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        cache: RJCache,
        writer: StatusWriter,
        fold: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.cache = cache
        self.writer = writer
        self.fold = fold
        self.wake = asyncio.Event()
        self.seeded = asyncio.Event()
        self.sem = asyncio.Semaphore(settings.admission_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()  # Job creations and re-admissions in flight
        self.reset()

    def reset(self) -> None:
        """Forget all admission state, as a fresh process would: a replica that becomes active
        again re-seeds it from the apiserver (``seed``), since what it held went stale."""
        self.seeded.clear()
        s = self.settings
        self.queue = AdmissionQueue(
            s.max_running, s.max_running_per_namespace, s.max_gpus, s.max_gpus_per_namespace
        )
        self.starting: set[str] = set()
        self.queued_reason: dict[str, tuple[str, str]] = {}
        self.create_refusals: dict[str, int] = {}  # uid -> Job creates refused in a row (quota)
        # RJ uids that had a Job when this process started: their status may still read as the
        # CRD's defaults (a Job that exists is not folded into a write until it has news), so they
        # are never "new".
        self.had_job_at_start: set[str] = set()
        self.suspend_seen: dict[str, bool] = {}
        # RJ uids this process has admitted (queued, re-attached or refused) once already
        self.admitted: set[str] = set()

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- seeding after a (re)start ----------------------------------------------------------------
    def _scopes(self) -> list[str | None]:
        return list(self.settings.namespaces) or [None]

    async def seed(self) -> None:
        """Rebuild the queue from the apiserver: unfinished Jobs hold slots, job-less RJs wait."""
        by_rj: dict[str, dict[str, Any]] = {}
        for scope in self._scopes():
            for job in await self.kube.list_jobs(scope, MANAGED_LABEL_SELECTOR):
                if (ref := jobs.controller(job)) is not None:
                    by_rj[ref["uid"]] = job
        self.had_job_at_start = set(by_rj)
        for scope in self._scopes():
            for body in await self.kube.list_rjs(scope):
                rj = self.cache.remember(body)
                if rj.terminal or rj.spec is None:
                    continue  # an invalid spec is failed by ``admit``
                entry = entry_for(rj, self.settings.trust_kueue)
                action = seed_action(entry, by_rj.get(rj.uid), rj.kueue)
                if action == "hold":
                    self.queue.hold(entry.uid, entry.namespace, entry.gpus)
                elif action == "submit":
                    self.queue.submit(entry)
        log.info(
            "seeded: %d RJs, %d Jobs, %d holding slots, %d waiting",
            len(self.cache), len(by_rj), len(self.queue.running), len(self.queue.waiting),
        )  # fmt: skip
        self.seeded.set()
        self.wake.set()

    # --- what the other parts tell admission ------------------------------------------------------
    def job_ended(self, rj_uid: str) -> None:
        """The RJ's Job finished or went away: its slot goes to the next RJ."""
        if self.queue.release(rj_uid):
            self.wake.set()

    def forget(self, uid: str) -> None:
        self.queue.withdraw(uid)
        self.job_ended(uid)
        self.queued_reason.pop(uid, None)
        self.suspend_seen.pop(uid, None)
        self.admitted.discard(uid)
        self.create_refusals.pop(uid, None)

    def submit(self, rj: CachedRJ) -> None:
        if rj.spec is not None:
            self.queue.submit(entry_for(rj, self.settings.trust_kueue))
            self.wake.set()

    def hold(self, rj: CachedRJ) -> None:
        entry = entry_for(rj, self.settings.trust_kueue)
        if entry.capped:
            self.queue.hold(entry.uid, entry.namespace, entry.gpus)

    # --- the admission task -----------------------------------------------------------------------
    async def loop(self) -> None:
        await self.seeded.wait()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            self.wake.clear()
            try:
                await self._round()
            except Exception:
                log.exception("admission round failed; retrying")
                await asyncio.sleep(1.0)

    def _latest(self, entry: Entry) -> CachedRJ | None:
        return self.cache.get(entry.uid) or entry.rj

    async def _round(self) -> None:
        for entry in self.queue.expired(time.time()):
            self.queued_reason.pop(entry.uid, None)
            if (rj := self._latest(entry)) is not None:
                message = f"waited longer than queueTimeoutSeconds={entry.timeout}"
                await self.writer.set_phase(rj, Phase.FAILED, "QueueTimeout", message)
        for entry in self.queue.admissible():
            self.queued_reason.pop(entry.uid, None)
            self.starting.add(entry.uid)
            self._spawn(self._start(entry), f"rollcall-start-{entry.name}")
        metrics.QUEUE_LENGTH.set(len(self.queue.waiting))
        metrics.RUNNING_SLOTS.set(len(self.queue.running))
        for uid, entry in list(self.queue.waiting.items()):
            why = self.queue.why_waiting(entry)
            if self.queued_reason.get(uid) == why:
                continue
            self.queued_reason[uid] = why
            if (rj := self._latest(entry)) is not None:
                await self.writer.mark_queued(rj, why[0], why[1], queued_extra(rj))

    async def _start(self, entry: Entry) -> None:
        """Create the RJ's Job (or find it); on failure give the slot back and retry later.

        A create the namespace's ResourceQuota/LimitRange refuses is shown in status (Queued,
        QuotaExceeded, the apiserver's words) and retried with a doubling delay, not every 2 s.
        """
        delay = _CREATE_RETRY_SECONDS
        async with self.sem:
            try:
                if await self._create_job(entry):
                    self.create_refusals.pop(entry.uid, None)
                    return
            except ApiException as e:
                if (refusal := refusals.classify(e.status, getattr(e, "body", None))) is None:
                    log.warning("creating the Job of %s/%s failed: %s",
                                entry.namespace, entry.name, e.status)  # fmt: skip
                else:
                    n = self.create_refusals[entry.uid] = self.create_refusals.get(entry.uid, 0) + 1
                    s = self.settings
                    delay = webhook.backoff(n, s.quota_retry_seconds, s.quota_retry_max_seconds)
                    log.info("Job of %s/%s refused (%s); retry in %.0fs",
                             entry.namespace, entry.name, refusal.reason, delay)  # fmt: skip
                    if (rj := self._latest(entry)) is not None:
                        await self.writer.mark_queued(rj, refusal.reason, refusal.message)
            except Exception as e:
                log.warning("creating the Job of %s/%s failed: %s", entry.namespace, entry.name, e)
            finally:
                self.starting.discard(entry.uid)
        self.queue.release(entry.uid)
        if entry.uid in self.cache:
            await asyncio.sleep(delay)
            self.queue.submit(entry)
            self.wake.set()

    async def _create_job(self, entry: Entry) -> bool:
        """True when the RJ has its Job (made now, or earlier) or needs none any more."""
        rj = self._latest(entry)
        if rj is None or rj.terminal or rj.spec is None:  # ``admit`` fails an invalid spec
            self.queue.release(entry.uid)
            return True
        if (why := over_bounds(rj.spec.resources, self.settings.job_bounds())) is not None:
            self.queue.release(entry.uid)
            await self.writer.set_phase(rj, Phase.FAILED, "ResourcesExceedLimit", why)
            return True
        manifest = build_job(rj.body, self.settings, rj.spec)
        name = manifest["metadata"]["name"]
        # No status write here, nor when the Job's ADDED event is folded: the CRD's default already
        # says Pending (status.pending_by_default), jobName lands with the next transition, and a
        # restart finds the Job by its deterministic name. Two writes per RJ fewer in a burst.
        try:
            await self.kube.create_job(manifest)
            metrics.JOBS_CREATED.inc()
            metrics.QUEUE_WAIT.observe(max(0.0, time.time() - entry.created))
            return True
        except ApiException as e:
            if e.status != 409:
                raise
        existing = await self.kube.read_job(entry.namespace, name)
        if existing is not None and jobs.owned_by(existing, entry.uid):
            # Made by an earlier run of this operator: adopt it, and fold it now, since a Job that
            # already finished sends no further events to fold. A Job its RJ suspended, and then
            # resumed while the caps were full, is resumed now that it has its slot again.
            now = entry_for(rj, self.settings.trust_kueue) if rj.spec is not None else entry
            use = job_slot(now, jobs.suspended(existing), rj.kueue)
            if use == "wait" and not jobs.finished(existing):
                await self._suspend_job(rj, False)
            self.fold(existing)
            return True
        if (holder := self._job_holder(existing, rj)) is not None:
            # a live RJ of another name holds this Job name (an RJ named like another's shortened
            # name + hash): waiting cannot help, and the holder's Job is not this RJ's to touch
            self.queue.release(entry.uid)
            await self.writer.set_phase(
                rj, Phase.FAILED, "JobNameTaken",
                f"the Job name {name} belongs to RecognitionJob {holder}; "
                "submit this job again under another name",
            )  # fmt: skip
            return True
        log.info(
            "Job %s/%s belongs to another RJ (being deleted?); retrying", entry.namespace, name
        )
        return False

    def _job_holder(self, job: Mapping[str, Any] | None, rj: CachedRJ) -> str | None:
        """The name of the live RJ of another name that owns ``job``, else None (no Job, or the
        owner is a deleted namesake whose Job garbage collection is about to remove: retry)."""
        ref = jobs.controller(job) if job is not None else None
        owner = self.cache.get(str(ref.get("uid"))) if ref is not None else None
        if owner is None or owner.deleting or owner.name == rj.name:
            return None
        return owner.name

    # --- an RJ's first event ----------------------------------------------------------------------
    async def admit(self, rj: CachedRJ) -> None:
        """Validate the spec, then queue the RJ or re-attach to the Job a previous run made.

        Called from the RJ watch for the first event this process sees of an RJ (its creation,
        or the initial listing after a start). A failed attempt is retried after a delay;
        queueing and status writes are idempotent.
        """
        if rj.uid in self.admitted:
            return
        self.admitted.add(rj.uid)
        if rj.terminal:
            return
        if rj.spec is None:
            message = rj.spec_error or "invalid spec"
            log.warning("invalid spec of %s: %s", rj.name, message[:300])
            await self.writer.set_phase(rj, Phase.FAILED, "InvalidSpec", message[:1000])
            return
        if (why := over_bounds(rj.spec.resources, self.settings.job_bounds())) is not None:
            # the operator's per-job limits (settings), which the CRD schema cannot know
            self.queue.withdraw(rj.uid)  # seeded after a restart, perhaps
            await self.writer.set_phase(rj, Phase.FAILED, "ResourcesExceedLimit", why)
            return
        try:
            await self.ensure_known(rj)
        except (ApiException, aiohttp.ClientError, OSError) as e:
            # an apiserver restart surfaces as a connection error, not an answer: retry it too,
            # or the RJ would stay un-admitted until its next event
            why = getattr(e, "status", None) or type(e).__name__
            log.warning("admitting %s failed (%s), retrying", rj.name, why)
            self.admitted.discard(rj.uid)
            self._spawn(self._readmit_later(rj.uid), f"rollcall-readmit-{rj.uid}")

    async def _readmit_later(self, uid: str) -> None:
        await asyncio.sleep(READMIT_SECONDS)
        if (rj := self.cache.get(uid)) is not None:
            await self.admit(rj)

    async def ensure_known(self, rj: CachedRJ) -> None:
        """Resume/create: hold a slot for an existing Job and fold it, or queue the RJ."""
        await self.seeded.wait()
        uid = rj.uid
        if uid in self.queue.running or uid in self.queue.waiting or uid in self.starting:
            return
        if rj.unwritten and uid not in self.had_job_at_start:
            # brand new (its status reads as the CRD's defaults): no Job can be ours yet, and a
            # namesake's (or a lost replica's) is caught at create (409, then adopted if ours)
            self.submit(rj)
            return
        job = await self.kube.read_job(rj.namespace, job_name(rj.name))
        if job is not None and jobs.owned_by(job, uid):
            if not jobs.finished(job):
                entry = entry_for(rj, self.settings.trust_kueue)
                use = job_slot(entry, jobs.suspended(job), rj.kueue)
                if use == "hold":
                    self.hold(rj)
                elif use == "wait":
                    self.submit(rj)  # resumed while we were down: resumed once it has a slot
                elif not jobs.suspended(job):
                    await self._suspend_job(rj, True)  # suspended while we were down
            self.fold(job)
            return
        self.submit(rj)

    # --- spec.runPolicy.suspend -------------------------------------------------------------------
    async def track_suspend(self, rj: CachedRJ) -> None:
        """Apply a change of ``spec.runPolicy.suspend`` to the queue entry or the Job."""
        desired = rj.wants_suspend
        previous = self.suspend_seen.get(rj.uid)
        self.suspend_seen[rj.uid] = desired
        if previous is None or previous == desired:
            return
        self.queue.set_suspended(rj.uid, desired)
        self.queued_reason.pop(rj.uid, None)
        self.wake.set()
        if rj.kueue:
            return  # Kueue owns .spec.suspend of its Jobs, and their slots
        if desired:
            self.queue.release(rj.uid)  # a suspended Job frees its slot for the next RJ
            await self._suspend_job(rj, True)
        elif not rj.terminal:
            # back in line: admission creates the Job, or resumes it, once a slot is free
            self.submit(rj)

    async def _suspend_job(self, rj: CachedRJ, desired: bool) -> None:
        if rj.kueue:
            return  # Kueue owns .spec.suspend of its Jobs
        try:
            await self.kube.patch_job(
                rj.namespace, job_name(rj.name), {"spec": {"suspend": desired}}
            )
            log.info("Job of %s/%s %s", rj.namespace, rj.name,
                     "suspended" if desired else "resumed")  # fmt: skip
        except ApiException as e:
            if e.status != 404:
                log.warning("suspending the Job of %s failed: %s", rj.name, e.status)
