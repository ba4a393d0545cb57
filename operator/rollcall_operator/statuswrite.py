"""Conditional status writes: every RJ status patch is computed from, and conditional on, one version.

Fold, admission, progress, webhooks and a second replica all write the same status. Each write
carries the resourceVersion of the status its patch was computed from, so a patch computed from
older state never overwrites a newer one: on a conflict (409), or when the server refuses the
transition (422: the CRD's rule that a finished RJ's phase is final), the RJ is re-read and the
patch recomputed from what won (tenacity paces the retries with a growing random delay, so writers
that keep colliding take turns instead of racing in lockstep).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from rollcall_contract.model import TERMINAL_PHASES, Phase
from rollcall_operator import metrics
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.kube import ApiException, Kube, StaleStatus
from rollcall_operator.status import phase_patch, waiting_patch
from rollcall_operator.times import now_iso, parse_time

log = logging.getLogger("rollcall.operator")

# A status patch, or how to compute one from the current status (None: nothing to write).
PatchSource = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
# Dozens of conflicts in a row means a hot loop, not bad luck; a loaded apiserver with several
# writers on one RJ (fold, admission, progress, webhooks) can cost a dozen.
WRITE_ATTEMPTS = 30
_WARNING_PHASES = {Phase.FAILED.value, Phase.CANCELLED.value}


class _Lost(Exception):
    """This attempt lost to a newer write; the cache now holds the winner."""


# Random exponential back-off from a few ms up to 0.5 s: writers that keep colliding spread out
# (a fixed small jitter kept two writers in step on a slow apiserver until one gave up).
_jitter = wait_random_exponential(multiplier=0.005, max=0.5)


def transition_event(phase: str, status: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The (type, reason, message) of the Event that announces a move to ``phase``, or None.

    Pending follows the Job's creation at once and says nothing ``kubectl describe`` would miss:
    skipping its Event saves one apiserver write per RJ in a burst.
    """
    if phase == Phase.PENDING.value:
        return None
    message = status.get("message") or status.get("reason") or ""
    return ("Warning" if phase in _WARNING_PHASES else "Normal", phase, message)


def run_seconds(status: Mapping[str, Any], now: float) -> float | None:
    """How long a finished run took (start to completion, or to ``now``); None if it never started."""
    if not status.get("startTime"):
        return None
    end = parse_time(status.get("completionTime")) or now
    return max(0.0, end - parse_time(status["startTime"]))


def post_event(rj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the RJ (``kubectl describe rj``); best effort, never blocks."""
    with contextlib.suppress(LookupError, RuntimeError):
        kopf.event(dict(rj), type=kind, reason=reason, message=message[:1000])  # type: ignore[arg-type]


class StatusWriter:
    """Writes RJ status conditionally; ``on_written`` hears of every write that landed."""

    def __init__(
        self,
        kube: Kube,
        cache: RJCache,
        on_written: Callable[[CachedRJ], None] = lambda _rj: None,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.on_written = on_written

    async def write(self, rj: CachedRJ, patch: PatchSource) -> bool:
        """Write ``patch`` (recomputed on each conflict); False when nothing was written.

        Posts an Event and counts a transition when the phase moves. An API error other than a
        conflict or a refused transition is raised.
        """
        compute = patch if callable(patch) else (lambda _status: patch)
        if compute((self.cache.get(rj.uid) or rj).status) is None:
            return False  # nothing to write (most folds in a burst): skip the retry machinery
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Lost),
                stop=stop_after_attempt(WRITE_ATTEMPTS),
                wait=_jitter,
            ):
                with attempt:
                    return await self._attempt(self.cache.get(rj.uid) or rj, compute)
        except RetryError:
            log.warning("status of %s/%s not written: still conflicting", rj.namespace, rj.name)
        return False

    async def _attempt(
        self, base: CachedRJ, compute: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
    ) -> bool:
        body = compute(base.status)
        if body is None:
            return False
        try:
            updated = await self.kube.patch_rj_status(
                base.namespace,
                base.name,
                base.uid,
                body,
                resource_version=base.meta.get("resourceVersion"),
            )
        except (StaleStatus, ApiException) as e:
            if isinstance(e, ApiException) and e.status != 422:
                raise
            fresh = await self.kube.read_rj(base.namespace, base.name)
            if fresh is None or fresh["metadata"]["uid"] != base.uid:
                return False  # deleted (or replaced by a namesake): nothing to write to
            metrics.STATUS_CONFLICTS.inc()
            self.cache.remember(fresh)
            raise _Lost from e
        if updated is None:
            return False
        self._after_write(self.cache.remember(updated), body)
        return True

    def _after_write(self, updated: CachedRJ, patch: Mapping[str, Any]) -> None:
        phase = patch.get("phase")
        if phase is not None:
            if (event := transition_event(phase, updated.status)) is not None:
                post_event(updated.body, *event)
            metrics.TRANSITIONS.labels(phase).inc()
            took = run_seconds(updated.status, time.time())
            if phase in TERMINAL_PHASES and took is not None:
                metrics.RUN_TIME.observe(took)
        self.on_written(updated)

    async def set_phase(
        self, rj: CachedRJ, phase: Phase, reason: str | None, message: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:  # fmt: skip
        return await self.write(
            rj,
            lambda current: phase_patch(
                current, phase, reason=reason, message=message, now=now_iso(), extra=extra
            ),
        )

    async def mark_queued(
        self, rj: CachedRJ, reason: str, message: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:  # fmt: skip
        """Queued with why, unless the RJ has meanwhile got its Job (then the fold owns it)."""
        return await self.write(
            rj,
            lambda current: waiting_patch(current, reason, message, now=now_iso(), extra=extra),
        )
