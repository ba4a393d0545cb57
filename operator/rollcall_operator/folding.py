"""Folding Job (and pod) state into the RJ's status, coalesced per Job.

A burst of events for one Job costs one status computation: events that arrive while a fold of
that Job runs replace each other, and the newest is folded next. Pod events matter only when the
scheduler's verdict on a pod changes (Unschedulable and why, or placed at last), which changes
nothing on the Job itself. Kueue's reason for holding a Job lives on its Workload, so the Jobs
Kueue holds are re-folded every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from rollcall_contract.model import Phase
from rollcall_operator import jobs
from rollcall_operator.builder import job_name, result_key
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.kube import ApiException, Kube
from rollcall_operator.pods import schedule_verdict
from rollcall_operator.status import job_status_patch, kueue_reason
from rollcall_operator.statuswrite import StatusWriter
from rollcall_operator.times import now_iso

log = logging.getLogger("rollcall.operator")

# How often Kueue's reason for a Job it holds is re-read (it changes on the Workload, not the Job).
KUEUE_POLL_SECONDS = 5.0
_RETRY_SECONDS = 1.0

Verdict = tuple[str, str | None]


def verdict_changed(seen: dict[str, Verdict], pod_uid: str, verdict: Verdict | None) -> bool:
    """Record the scheduler's ``verdict`` on a pod in ``seen``; True when it differs from before."""
    if verdict == seen.get(pod_uid):
        return False
    if verdict is None:
        del seen[pod_uid]
    else:
        seen[pod_uid] = verdict
    return True


class Folder:
    """Folds Jobs into RJs; ``job_ended(rj_uid)`` hears of each Job that finished or went away."""

    def __init__(
        self, kube: Kube, cache: RJCache, writer: StatusWriter, job_ended: Callable[[str], None]
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.writer = writer
        self.job_ended = job_ended
        # unfinished Jobs by uid (from Job events), so a pod event can fold its Job without a read
        self.jobs: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, tuple[dict[str, Any], bool]] = {}  # Job uid -> (body, deleted)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # pod uid -> the scheduler's (reason, message) while it cannot place the pod
        self.unschedulable: dict[str, Verdict] = {}

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def fold(self, job: Mapping[str, Any], deleted: bool = False) -> None:
        """Schedule folding ``job`` into its RJ; events arriving meanwhile are coalesced."""
        uid = job["metadata"]["uid"]
        if deleted or jobs.finished(job):
            self.jobs.pop(uid, None)
        else:
            self.jobs[uid] = dict(job)
        self.latest[uid] = (dict(job), deleted)
        if uid not in self.tasks:
            self.tasks[uid] = asyncio.create_task(self._loop(uid), name=f"rollcall-fold-{uid}")

    def pod_seen(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        """Fold a pod's Job when the scheduler's verdict on the pod changed.

        Without this the RJ would keep the reason it had when the Job was created. Other pod
        changes fold nothing here: the Job's own events cover them.
        """
        verdict = None if deleted else schedule_verdict(pod)
        if not verdict_changed(self.unschedulable, pod["metadata"]["uid"], verdict):
            return
        ref = jobs.controller(pod, "Job")
        if ref is not None and (job := self.jobs.get(ref["uid"])) is not None:
            self.fold(job)

    async def _loop(self, job_uid: str) -> None:
        try:
            while (item := self.latest.pop(job_uid, None)) is not None:
                job, deleted = item
                try:
                    await self._once(job, deleted)
                except Exception:
                    log.exception("folding Job %s failed", job["metadata"].get("name"))
                    await asyncio.sleep(_RETRY_SECONDS)
                    self.latest.setdefault(job_uid, item)  # unless a newer event came meanwhile
        finally:
            self.tasks.pop(job_uid, None)

    async def _once(self, job: Mapping[str, Any], deleted: bool) -> None:
        ref = jobs.controller(job)
        if ref is None:
            return
        rj_uid, namespace = ref["uid"], job["metadata"]["namespace"]
        if deleted or jobs.finished(job):
            self.job_ended(rj_uid)
        rj = self.cache.get(rj_uid)
        if rj is None:
            body = await self.kube.read_rj(namespace, ref["name"])
            rj = CachedRJ.of(body) if body is not None else None  # not cached: no watch event yet
        if rj is None or rj.uid != rj_uid or rj.deleting:
            return
        if deleted:
            if not rj.terminal:
                await self.writer.set_phase(
                    rj, Phase.CANCELLED, "JobDeleted", "the Job was deleted"
                )
            return
        pods = []
        if jobs.needs_pods(job):
            pods = await self.kube.list_pods(namespace, jobs.pod_selector(job))
        detail = None
        if rj.kueue and jobs.suspended(job) and not jobs.finished(job):
            detail = kueue_reason(await self.kube.kueue_workload(namespace, job["metadata"]["uid"]))
        generation, key = rj.generation, result_key(namespace, rj_uid)
        await self.writer.write(
            rj,
            lambda cur: job_status_patch(
                cur, job, pods, now=now_iso(), kueue=rj.kueue, kueue_detail=detail,
                generation=generation, result_key=key,
            ),
        )  # fmt: skip

    async def kueue_loop(self) -> None:
        """Re-fold the Jobs Kueue holds back, so their RJs carry Kueue's current reason."""
        while True:
            await asyncio.sleep(KUEUE_POLL_SECONDS)
            for rj in self.cache.with_reason("WaitingForKueue"):
                try:
                    job = await self.kube.read_job(rj.namespace, job_name(rj.name))
                except ApiException as e:
                    log.warning("reading a Job Kueue holds failed: %s", e.status)
                    continue
                if job is not None:
                    self.fold(job)
