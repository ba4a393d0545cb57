"""The operator's long-lived state and background loops; kopf handlers (handlers.py) call into it.

One ``Runtime`` per process, made in the startup handler and kept in kopf's ``memo``:

- an RJ cache fed by the RJ watch (kopf ``on.event``), so folding a Job's state needs no RJ read;
- the admission queue and the one task that turns admitted RJs into Jobs (get-or-create by the
  deterministic name: a repeated or concurrent create meets 409 AlreadyExists, never a twin);
- Job folding, coalesced per Job: bursts of Job events for one Job cost one status computation;
- a progress loop that copies done/total from Redis for running RJs in one pipelined round trip;
- webhook deliveries, one task per RJ, retried with backoff, recorded in ``status.webhook``.

All durable state is in the apiserver; after a restart ``seed`` rebuilds the queue from Jobs and RJs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf
import redis.asyncio as aioredis
from pydantic import ValidationError

from rollcall_contract import keys, redisclient
from rollcall_contract.model import KIND, TERMINAL_PHASES, Phase, parse_spec
from rollcall_operator import metrics, refusals, webhook
from rollcall_operator.builder import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    build_job,
    job_name,
    result_key,
)
from rollcall_operator.kube import ApiException, Kube, StaleStatus
from rollcall_operator.pods import schedule_verdict
from rollcall_operator.quantities import over_bounds
from rollcall_operator.queue import AdmissionQueue, Entry, entry_for, job_slot, parse_time
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.status import (
    job_status_patch,
    kueue_reason,
    phase_patch,
    progress_patch,
    waiting_patch,
)

log = logging.getLogger("rollcall.operator")
MANAGED_LABEL_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
_WARNING_PHASES = {Phase.FAILED.value, Phase.CANCELLED.value}
# A status patch, or how to compute one from the current status (None: nothing to write).
PatchSource = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
# Conditional writes re-read and retry on conflict; more than a few in a row means a hot loop.
_STATUS_WRITE_ATTEMPTS = 12
_ADMIT_RETRY_SECONDS = 5.0
# How often Kueue's reason for a Job it holds is re-read (it changes on the Workload, not the Job).
_KUEUE_POLL_SECONDS = 5.0


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _controller(job: Mapping[str, Any], kind: str = KIND) -> Mapping[str, Any] | None:
    for ref in job["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref  # type: ignore[no-any-return]
    return None


def _job_suspended(job: Mapping[str, Any]) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def _rv(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revisions are; treat anything else as unknown)."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _progress(done: int, total: int, current: Mapping[str, Any]) -> dict[str, Any] | None:
    return progress_patch(current, done, total)


def _post_event(rj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the RJ (``kubectl describe rj``); best effort, never blocks."""
    with contextlib.suppress(LookupError, RuntimeError):
        kopf.event(dict(rj), type=kind, reason=reason, message=message[:1000])  # type: ignore[arg-type]


class Runtime:
    def __init__(self, settings: OperatorSettings, kube: Kube, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.kube = kube
        self.redis = redis
        self.queue = AdmissionQueue(
            settings.max_running,
            settings.max_running_per_namespace,
            settings.max_gpus,
            settings.max_gpus_per_namespace,
        )
        self.create_refusals: dict[str, int] = {}  # uid -> Job creates refused in a row (quota)
        self.rjs: dict[str, dict[str, Any]] = {}  # uid -> latest body
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.sem = asyncio.Semaphore(settings.admission_concurrency)
        self.starting: set[str] = set()
        self.queued_reason: dict[str, tuple[str, str]] = {}
        self.fold_latest: dict[str, dict[str, Any]] = {}
        self.fold_tasks: dict[str, asyncio.Task[None]] = {}
        self.webhooks: dict[str, asyncio.Task[None]] = {}
        self.http: aiohttp.ClientSession | None = None
        self.seeded = asyncio.Event()
        # RJ uids that had a Job when this process started: their status may still be empty (the
        # previous run died between creating the Job and folding it), so they are never "new".
        self.had_job_at_start: set[str] = set()
        self.suspend_seen: dict[str, bool] = {}
        # RJ uids this process has admitted (queued, re-attached or refused) once already
        self.admitted: set[str] = set()
        self.readmits: set[asyncio.Task[None]] = set()
        # unfinished Jobs by uid (from Job events), so a pod event can fold its Job without a read
        self.jobs: dict[str, dict[str, Any]] = {}
        # pod uid -> the scheduler's (reason, message) while it cannot place the pod
        self.unschedulable: dict[str, tuple[str, str | None]] = {}

    @classmethod
    async def open(cls, settings: OperatorSettings) -> Runtime:
        kube = await Kube.open(settings)
        redis = redisclient.async_client(
            settings.redis_url, settings.redis_ca_file, socket_timeout=5
        )
        return cls(settings, kube, redis)

    def start(self) -> None:
        self.http = webhook.session(self.settings.egress_allowlist())
        self.tasks.append(asyncio.create_task(self._admission_loop(), name="rollcall-admission"))
        self.tasks.append(asyncio.create_task(self._progress_loop(), name="rollcall-progress"))
        self.tasks.append(asyncio.create_task(self._kueue_loop(), name="rollcall-kueue"))

    async def close(self) -> None:
        pending = [*self.tasks, *self.fold_tasks.values(), *self.webhooks.values(), *self.readmits]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        await self.redis.aclose()
        await self.kube.close()

    # --- seeding after a (re)start ----------------------------------------------------------------
    def _scopes(self) -> list[str | None]:
        return list(self.settings.namespaces) or [None]

    async def seed(self) -> None:
        """Rebuild the queue from the apiserver: unfinished Jobs hold slots, job-less RJs wait."""
        jobs: dict[str, dict[str, Any]] = {}
        for scope in self._scopes():
            for job in await self.kube.list_jobs(scope, MANAGED_LABEL_SELECTOR):
                if (ref := _controller(job)) is not None:
                    jobs[ref["uid"]] = job
        self.had_job_at_start = set(jobs)
        for scope in self._scopes():
            for rj in await self.kube.list_rjs(scope):
                uid = rj["metadata"]["uid"]
                self.remember(rj)
                if (rj.get("status") or {}).get("phase") in TERMINAL_PHASES:
                    continue
                entry = entry_for(rj, self.settings.trust_kueue)
                if uid in jobs:
                    job = jobs[uid]
                    if entry.capped and not _finished(job):
                        kueue = bool((rj.get("spec") or {}).get("queue"))
                        use = job_slot(entry, _job_suspended(job), kueue)
                        if use == "hold":
                            self.queue.hold(uid, entry.namespace, entry.gpus)
                        elif use == "wait":
                            self.queue.submit(entry)
                else:
                    self.queue.submit(entry)
        log.info(
            "seeded: %d RJs, %d Jobs, %d holding slots, %d waiting",
            len(self.rjs), len(jobs), len(self.queue.running), len(self.queue.waiting),
        )  # fmt: skip
        self.seeded.set()
        self.wake.set()

    # --- the RJ cache -------------------------------------------------------------------------------
    def remember(self, rj: Mapping[str, Any]) -> None:
        uid = rj["metadata"]["uid"]
        old = self.rjs.get(uid)
        old_phase = (old.get("status") or {}).get("phase") if old else None
        new_phase = (rj.get("status") or {}).get("phase")
        if old is not None and _rv(old) > _rv(rj):
            return  # a stale event after our own, newer patch response
        self.rjs[uid] = dict(rj)
        if old_phase != new_phase:
            if old is not None:
                metrics.RJS_BY_PHASE.labels(old_phase or "New").dec()
            metrics.RJS_BY_PHASE.labels(new_phase or "New").inc()

    def forget(self, uid: str) -> None:
        old = self.rjs.pop(uid, None)
        if old is not None:
            metrics.RJS_BY_PHASE.labels((old.get("status") or {}).get("phase") or "New").dec()
        self.queue.withdraw(uid)
        if self.queue.release(uid):
            self.wake.set()
        self.queued_reason.pop(uid, None)
        self.suspend_seen.pop(uid, None)
        self.admitted.discard(uid)
        self.create_refusals.pop(uid, None)
        if (task := self.webhooks.pop(uid, None)) is not None:
            task.cancel()

    # --- status writes --------------------------------------------------------------------------------
    async def write_status(self, rj: Mapping[str, Any], patch: PatchSource) -> bool:
        """Write a status patch conditionally on the RJ version it was computed from.

        ``patch`` is a function of the current status (or a fixed patch). The write carries that
        status's resourceVersion, so a concurrent writer (fold, admission, progress, another
        replica) can never be overwritten by a patch computed from older state: on a conflict the
        RJ is re-read and the patch recomputed from what is there now (None: nothing to do).
        Posts an Event and counts a transition when the phase moves.
        """
        meta = rj["metadata"]
        uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]
        compute = patch if callable(patch) else (lambda _status: patch)
        for attempt in range(_STATUS_WRITE_ATTEMPTS):
            if attempt:
                # writers that keep colliding take turns instead of racing in lockstep
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
            base = self.rjs.get(uid) or rj
            body = compute(base.get("status") or {})
            if body is None:
                return False
            try:
                updated = await self.kube.patch_rj_status(
                    namespace,
                    name,
                    uid,
                    body,
                    resource_version=base["metadata"].get("resourceVersion"),
                )
            except (StaleStatus, ApiException) as e:
                if isinstance(e, ApiException) and e.status != 422:
                    raise
                # lost a race (409), or the server refused the transition (422: a finished RJ's
                # phase is final): re-read and recompute from the state that won
                fresh = await self.kube.read_rj(namespace, name)
                if fresh is None or fresh["metadata"]["uid"] != uid:
                    return False
                metrics.STATUS_CONFLICTS.inc()
                self.remember(fresh)
                rj = fresh
                continue
            if updated is None:
                return False
            self.remember(updated)
            self._after_write(updated, body)
            return True
        log.warning("status of %s/%s not written: still conflicting", namespace, name)
        return False

    def _after_write(self, updated: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        phase = patch.get("phase")
        if phase is None:
            return
        status = updated.get("status") or {}
        message = status.get("message") or status.get("reason") or ""
        if phase != Phase.PENDING.value:
            # Pending follows the Job's creation at once and says nothing `kubectl describe`
            # would miss: skipping its Event saves one apiserver write per RJ in a burst
            _post_event(
                updated, "Warning" if phase in _WARNING_PHASES else "Normal", phase, message
            )
        metrics.TRANSITIONS.labels(phase).inc()
        if phase in TERMINAL_PHASES and status.get("startTime"):
            end = parse_time(status.get("completionTime")) or time.time()
            metrics.RUN_TIME.observe(max(0.0, end - parse_time(status["startTime"])))
        self.maybe_deliver(updated)

    async def set_phase(
        self, rj: Mapping[str, Any], phase: Phase, reason: str | None, message: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        await self.write_status(
            rj,
            lambda current: phase_patch(
                current, phase, reason=reason, message=message, now=now_iso(), extra=extra
            ),
        )

    async def mark_queued(
        self, rj: Mapping[str, Any], reason: str, message: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Queued with why, unless the RJ has meanwhile got its Job (then the fold owns it)."""
        await self.write_status(
            rj,
            lambda current: waiting_patch(current, reason, message, now=now_iso(), extra=extra),
        )

    # --- admission ------------------------------------------------------------------------------------
    def submit(self, rj: Mapping[str, Any]) -> None:
        self.queue.submit(entry_for(rj, self.settings.trust_kueue))
        self.wake.set()

    def hold(self, rj: Mapping[str, Any]) -> None:
        entry = entry_for(rj, self.settings.trust_kueue)
        if entry.capped:
            self.queue.hold(entry.uid, entry.namespace, entry.gpus)

    async def _admission_loop(self) -> None:
        await self.seeded.wait()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            self.wake.clear()
            try:
                await self._admit_round()
            except Exception:
                log.exception("admission round failed; retrying")
                await asyncio.sleep(1.0)

    async def _admit_round(self) -> None:
        for entry in self.queue.expired(time.time()):
            self.queued_reason.pop(entry.uid, None)
            message = f"waited longer than queueTimeoutSeconds={entry.timeout}"
            await self.set_phase(entry.body, Phase.FAILED, "QueueTimeout", message)
        for entry in self.queue.admissible():
            self.queued_reason.pop(entry.uid, None)
            self.starting.add(entry.uid)
            task = asyncio.create_task(self._start(entry), name=f"rollcall-start-{entry.name}")
            key = f"start:{entry.uid}"
            self.fold_tasks[key] = task
            task.add_done_callback(self._forget_task(key))
        metrics.QUEUE_LENGTH.set(len(self.queue.waiting))
        metrics.RUNNING_SLOTS.set(len(self.queue.running))
        for uid, entry in list(self.queue.waiting.items()):
            why = self.queue.why_waiting(entry)
            if self.queued_reason.get(uid) == why:
                continue
            self.queued_reason[uid] = why
            status = (self.rjs.get(uid) or entry.body).get("status") or {}
            extra = {} if status.get("queuedTime") else {"queuedTime": now_iso()}
            await self.mark_queued(entry.body, why[0], why[1], extra)

    def _forget_task(self, key: str) -> Any:
        def done(_task: asyncio.Task[None]) -> None:
            self.fold_tasks.pop(key, None)

        return done

    async def _start(self, entry: Entry) -> None:
        """Create the RJ's Job (or find it); on failure give the slot back and retry later.

        A create the namespace's ResourceQuota/LimitRange refuses is shown in status (Queued,
        QuotaExceeded, the apiserver's words) and retried with a doubling delay, not every 2 s.
        """
        delay = 2.0
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
                    await self.mark_queued(entry.body, refusal.reason, refusal.message)
            except Exception as e:
                log.warning("creating the Job of %s/%s failed: %s", entry.namespace, entry.name, e)
            finally:
                self.starting.discard(entry.uid)
        self.queue.release(entry.uid)
        if entry.uid in self.rjs:
            await asyncio.sleep(delay)
            self.queue.submit(entry)
            self.wake.set()

    async def _create_job(self, entry: Entry) -> bool:
        rj = self.rjs.get(entry.uid) or dict(entry.body)
        if (rj.get("status") or {}).get("phase") in TERMINAL_PHASES:
            self.queue.release(entry.uid)
            return True
        if (why := over_bounds(rj.get("spec") or {}, self.settings.job_bounds())) is not None:
            self.queue.release(entry.uid)
            await self.set_phase(rj, Phase.FAILED, "ResourcesExceedLimit", why)
            return True
        manifest = build_job(rj, self.settings)
        name = manifest["metadata"]["name"]
        # No status write here: the Job's ADDED event is folded into Pending/JobCreated + jobName,
        # and a restart finds the Job by its deterministic name, so one write per RJ is saved.
        try:
            await self.kube.create_job(manifest)
            metrics.JOBS_CREATED.inc()
            metrics.QUEUE_WAIT.observe(max(0.0, time.time() - entry.created))
            return True
        except ApiException as e:
            if e.status != 409:
                raise
        existing = await self.kube.read_job(entry.namespace, name)
        ref = _controller(existing) if existing else None
        if existing is not None and ref is not None and ref.get("uid") == entry.uid:
            # Made by an earlier run of this operator: adopt it, and fold it now, since a Job that
            # already finished sends no further events to fold. A Job its RJ suspended, and then
            # resumed while the caps were full, is resumed now that it has its slot again.
            kueue = bool(rj["spec"].get("queue"))
            use = job_slot(
                entry_for(rj, self.settings.trust_kueue), _job_suspended(existing), kueue
            )
            if use == "wait" and not _finished(existing):
                await self._suspend_job(rj, False)
            self.fold(existing)
            return True
        log.info(
            "Job %s/%s belongs to another RJ (being deleted?); retrying", entry.namespace, name
        )
        return False

    async def admit(self, rj: Mapping[str, Any]) -> None:
        """Validate the spec, then queue the RJ or re-attach to the Job a previous run made.

        Called from the RJ watch for the first event this process sees of an RJ (its creation,
        or the initial listing after a start). Unlike kopf's create/resume handlers this writes
        nothing to the RJ (no diff-base or progress annotations): one write fewer per RJ. A failed
        attempt is retried after a delay; queueing and status writes are idempotent.
        """
        uid = rj["metadata"]["uid"]
        if uid in self.admitted:
            return
        self.admitted.add(uid)
        if (rj.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return
        try:
            parse_spec(dict(rj["spec"]))
        except ValidationError as e:
            message = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            log.warning("invalid spec of %s: %s", rj["metadata"]["name"], message[:300])
            await self.set_phase(rj, Phase.FAILED, "InvalidSpec", message[:1000])
            return
        if (why := over_bounds(rj["spec"], self.settings.job_bounds())) is not None:
            # the operator's per-job limits (settings), which the CRD schema cannot know
            self.queue.withdraw(uid)  # seeded after a restart, perhaps
            await self.set_phase(rj, Phase.FAILED, "ResourcesExceedLimit", why)
            return
        try:
            await self.ensure_known(rj)
        except (ApiException, aiohttp.ClientError, OSError) as e:
            # an apiserver restart surfaces as a connection error, not an answer: retry it too,
            # or the RJ would stay un-admitted until its next event
            why = getattr(e, "status", None) or type(e).__name__
            log.warning("admitting %s failed (%s), retrying", rj["metadata"]["name"], why)
            self.admitted.discard(uid)
            self._readmit_later(uid)

    def _readmit_later(self, uid: str) -> None:
        async def again() -> None:
            await asyncio.sleep(_ADMIT_RETRY_SECONDS)
            if (rj := self.rjs.get(uid)) is not None:
                await self.admit(rj)

        task = asyncio.create_task(again(), name=f"rollcall-readmit-{uid}")
        self.readmits.add(task)
        task.add_done_callback(self.readmits.discard)

    async def ensure_known(self, rj: Mapping[str, Any]) -> None:
        """Resume/create: hold a slot for an existing Job and fold it, or queue the RJ."""
        await self.seeded.wait()
        meta = rj["metadata"]
        uid = meta["uid"]
        if uid in self.queue.running or uid in self.queue.waiting or uid in self.starting:
            return
        if not rj.get("status") and uid not in self.had_job_at_start:
            self.submit(rj)  # brand new: no Job can be ours yet (a namesake's is caught at create)
            return
        job = await self.kube.read_job(meta["namespace"], job_name(meta["name"]))
        ref = _controller(job) if job else None
        if job is not None and ref is not None and ref.get("uid") == uid:
            if not _finished(job):
                entry = entry_for(rj, self.settings.trust_kueue)
                use = job_slot(entry, _job_suspended(job), bool(rj["spec"].get("queue")))
                if use == "hold":
                    self.hold(rj)
                elif use == "wait":
                    self.submit(rj)  # resumed while we were down: resumed once it has a slot
                elif not _job_suspended(job):
                    await self._suspend_job(rj, True)  # suspended while we were down
            self.fold(job)
            return
        self.submit(rj)

    async def track_suspend(self, rj: Mapping[str, Any]) -> None:
        """Apply a change of ``spec.runPolicy.suspend`` to the queue entry or the Job."""
        uid = rj["metadata"]["uid"]
        desired = bool(((rj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
        previous = self.suspend_seen.get(uid)
        self.suspend_seen[uid] = desired
        if previous is None or previous == desired:
            return
        self.queue.set_suspended(uid, desired)
        self.queued_reason.pop(uid, None)
        self.wake.set()
        if (rj.get("spec") or {}).get("queue"):
            return  # Kueue owns .spec.suspend of its Jobs, and their slots
        if desired:
            self.queue.release(uid)  # a suspended Job frees its slot for the next RJ
            await self._suspend_job(rj, True)
        elif (rj.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            # back in line: admission creates the Job, or resumes it, once a slot is free
            self.submit(rj)

    async def _suspend_job(self, rj: Mapping[str, Any], desired: bool) -> None:
        meta = rj["metadata"]
        if (rj.get("spec") or {}).get("queue"):
            return  # Kueue owns .spec.suspend of its Jobs
        try:
            await self.kube.patch_job(
                meta["namespace"], job_name(meta["name"]), {"spec": {"suspend": desired}}
            )
            log.info("Job of %s/%s %s", meta["namespace"], meta["name"],
                     "suspended" if desired else "resumed")  # fmt: skip
        except ApiException as e:
            if e.status != 404:
                log.warning("suspending the Job of %s failed: %s", meta["name"], e.status)

    # --- folding Job state into the RJ -----------------------------------------------------------------
    def fold(self, job: Mapping[str, Any], deleted: bool = False) -> None:
        """Schedule folding ``job`` into its RJ; events arriving meanwhile are coalesced."""
        uid = job["metadata"]["uid"]
        if deleted or _finished(job):
            self.jobs.pop(uid, None)
        else:
            self.jobs[uid] = dict(job)
        self.fold_latest[uid] = {**job, "_deleted": deleted}
        if uid not in self.fold_tasks:
            task = asyncio.create_task(self._fold_loop(uid), name=f"rollcall-fold-{uid}")
            self.fold_tasks[uid] = task

    async def _fold_loop(self, job_uid: str) -> None:
        try:
            while (job := self.fold_latest.pop(job_uid, None)) is not None:
                try:
                    await self._fold_once(job, deleted=bool(job.pop("_deleted", False)))
                except Exception:
                    log.exception("folding Job %s failed", job["metadata"].get("name"))
                    await asyncio.sleep(1.0)
                    self.fold_latest.setdefault(job_uid, job)
        finally:
            self.fold_tasks.pop(job_uid, None)

    async def _fold_once(self, job: Mapping[str, Any], deleted: bool) -> None:
        ref = _controller(job)
        if ref is None:
            return
        rj_uid, namespace = ref["uid"], job["metadata"]["namespace"]
        if (deleted or _finished(job)) and self.queue.release(rj_uid):
            self.wake.set()
        rj = self.rjs.get(rj_uid) or await self.kube.read_rj(namespace, ref["name"])
        if rj is None or rj["metadata"]["uid"] != rj_uid or rj["metadata"].get("deletionTimestamp"):
            return
        current = rj.get("status") or {}
        if deleted:
            if current.get("phase") not in TERMINAL_PHASES:
                await self.set_phase(rj, Phase.CANCELLED, "JobDeleted", "the Job was deleted")
            return
        status = job.get("status") or {}
        needs_pods = _finished(job) or int(status.get("active") or 0) > 0
        selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
        pods = await self.kube.list_pods(namespace, selector) if needs_pods else []
        kueue = bool((rj.get("spec") or {}).get("queue"))
        detail = None
        if kueue and (job.get("spec") or {}).get("suspend") and not _finished(job):
            detail = kueue_reason(await self.kube.kueue_workload(namespace, job["metadata"]["uid"]))
        generation = rj["metadata"].get("generation")
        await self.write_status(
            rj,
            lambda cur: job_status_patch(
                cur, job, pods, now=now_iso(), kueue=kueue, kueue_detail=detail,
                generation=generation, result_key=result_key(namespace, rj_uid),
            ),
        )  # fmt: skip

    async def _kueue_loop(self) -> None:
        """Re-fold the Jobs Kueue holds back, so their RJs carry Kueue's current reason."""
        while True:
            await asyncio.sleep(_KUEUE_POLL_SECONDS)
            waiting = [
                rj["metadata"] for rj in self.rjs.values()
                if (rj.get("status") or {}).get("reason") == "WaitingForKueue"
            ]  # fmt: skip
            for meta in waiting:
                try:
                    job = await self.kube.read_job(meta["namespace"], job_name(meta["name"]))
                except ApiException as e:
                    log.warning("reading a Job Kueue holds failed: %s", e.status)
                    continue
                if job is not None:
                    self.fold(job)

    def pod_seen(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        """Fold a pod's Job when the scheduler's verdict on the pod changed.

        A Job does not change when the scheduler cannot place its pod (nor when it finally
        does, until the pod runs), so without this the RJ would keep the reason it had when the
        Job was created. Other pod changes fold nothing here: the Job's own events cover them.
        """
        uid = pod["metadata"]["uid"]
        verdict = None if deleted else schedule_verdict(pod)
        if verdict == self.unschedulable.get(uid):
            return
        if verdict is None:
            del self.unschedulable[uid]
        else:
            self.unschedulable[uid] = verdict
        ref = _controller(pod, "Job")
        if ref is not None and (job := self.jobs.get(ref["uid"])) is not None:
            self.fold(job)

    # --- progress --------------------------------------------------------------------------------------
    async def _progress_loop(self) -> None:
        interval = self.settings.progress_interval_seconds
        while True:
            await asyncio.sleep(interval)
            running = [
                rj for rj in self.rjs.values()
                if (rj.get("status") or {}).get("phase") == Phase.RUNNING.value
            ]  # fmt: skip
            if not running:
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                for rj in running:
                    meta = rj["metadata"]
                    pipe.hmget(keys.job_progress(meta["namespace"], meta["uid"]), "done", "total")
                rows = await pipe.execute()
            except Exception as e:
                log.warning("reading progress from Redis failed: %s", e)
                continue
            for rj, (done, total) in zip(running, rows, strict=True):
                if done is None or total is None:
                    continue
                if progress_patch(rj.get("status") or {}, int(done), int(total)) is None:
                    continue
                with contextlib.suppress(ApiException):
                    await self.write_status(rj, functools.partial(_progress, int(done), int(total)))

    # --- webhooks --------------------------------------------------------------------------------------
    def maybe_deliver(self, rj: Mapping[str, Any]) -> None:
        status, spec = rj.get("status") or {}, rj.get("spec") or {}
        uid = rj["metadata"]["uid"]
        if status.get("phase") not in TERMINAL_PHASES or not spec.get("callback"):
            return
        hook = status.get("webhook") or {}
        if hook.get("delivered") or uid in self.webhooks:
            return
        if hook.get("final"):
            return  # refused destination, or the receiver refused it (4xx): retrying cannot help
        if hook.get("lastStatus") is not None and not webhook.retryable(hook["lastStatus"]):
            return
        if int(hook.get("attempts") or 0) >= self.settings.webhook_max_attempts:
            return
        task = asyncio.create_task(self._deliver(uid), name=f"rollcall-webhook-{uid}")
        self.webhooks[uid] = task

    async def _deliver(self, uid: str) -> None:
        """POST until delivered, refused or out of attempts; each attempt is counted in status
        *before* it is sent, so a POST that crashes the operator is not repeated forever."""
        s = self.settings
        allow = s.egress_allowlist()
        try:
            rj = self.rjs.get(uid)
            if rj is None:
                return
            namespace, url = rj["metadata"]["namespace"], rj["spec"]["callback"]["url"]
            attempts = int(((rj.get("status") or {}).get("webhook") or {}).get("attempts") or 0)
            while attempts < s.webhook_max_attempts:
                rj = self.rjs.get(uid)
                if rj is None:
                    return
                attempts += 1
                sending = {"delivered": False, "attempts": attempts, "lastAttemptTime": now_iso()}
                if not await self.write_status(rj, {"webhook": sending}):
                    return
                try:
                    # the RJ's own namespace's Secret, by a name the RJ cannot choose
                    secret = await self.kube.read_secret_key(
                        namespace, s.webhook_secret_name, s.webhook_secret_key
                    )
                except (ApiException, KeyError) as e:
                    log.warning("webhook secret of %s unavailable: %s", namespace,
                                getattr(e, "status", "missing key"))  # fmt: skip
                    result = webhook.Attempt(None, "the namespace's signing secret is missing",
                                             retry=True)  # fmt: skip
                else:
                    assert self.http is not None
                    result = await webhook.post(
                        self.http, url, webhook.payload(rj), allow=allow, secret=secret,
                        delivery=uid, timestamp=str(int(time.time())),
                        timeout=s.webhook_timeout_seconds,
                        max_response_bytes=s.webhook_max_response_bytes,
                    )  # fmt: skip
                final = not result.retry or attempts >= s.webhook_max_attempts
                record = {
                    **sending,
                    "delivered": result.delivered,
                    "lastStatus": result.status,
                    "lastError": result.error,
                    "final": final,
                }
                await self.write_status(self.rjs.get(uid) or rj, {"webhook": record})
                if result.delivered:
                    metrics.WEBHOOK_DELIVERIES.inc()
                    _post_event(rj, "Normal", "WebhookDelivered", f"answered {result.status}")
                    return
                metrics.WEBHOOK_FAILURES.labels("true" if final else "false").inc()
                if final:
                    _post_event(
                        rj, "Warning", "WebhookFailed", f"{result.error} after {attempts} attempts"
                    )
                    return
                await asyncio.sleep(
                    webhook.backoff(
                        attempts, s.webhook_backoff_seconds, s.webhook_backoff_max_seconds
                    )
                )
        except ApiException as e:
            log.warning("webhook status of %s not written: %s", uid, e.status)
        finally:
            self.webhooks.pop(uid, None)
