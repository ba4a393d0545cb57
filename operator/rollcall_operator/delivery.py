"""Completion webhooks: one delivery task per finished RJ, its attempts recorded in ``status.webhook``.

Each attempt is counted in status *before* it is sent, so a POST that crashes the operator is not
repeated forever, and a restarted (or the other) replica resumes from the recorded count. The loop
stays a plain loop rather than a tenacity retry: the count lives in the apiserver, each attempt
writes status twice, and the delay follows the recorded count, not the attempts of this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from rollcall_operator import metrics, webhook
from rollcall_operator.cache import CachedRJ, RJCache
from rollcall_operator.kube import ApiException, Kube
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.statuswrite import StatusWriter, post_event
from rollcall_operator.times import now_iso

log = logging.getLogger("rollcall.operator")


def delivery_due(rj: CachedRJ, max_attempts: int) -> bool:
    """Whether a (further) POST may help: finished, a callback, not delivered, not given up on."""
    if not rj.terminal or rj.spec is None or rj.spec.callback is None:
        return False
    hook = rj.webhook
    if hook.delivered or hook.final:
        return False  # refused destination, or the receiver refused it (4xx): retrying cannot help
    if hook.last_status is not None and not webhook.retryable(hook.last_status):
        return False
    return hook.attempts < max_attempts


def attempt_record(attempt: int, result: webhook.Attempt, max_attempts: int) -> dict[str, Any]:
    """``status.webhook`` after attempt number ``attempt`` ended with ``result``."""
    return {
        "attempts": attempt,
        "delivered": result.delivered,
        "lastStatus": result.status,
        "lastError": result.error,
        "final": not result.retry or attempt >= max_attempts,
    }


class Deliveries:
    """Delivery tasks by RJ uid; at most one per RJ."""

    def __init__(
        self, settings: OperatorSettings, kube: Kube, cache: RJCache, writer: StatusWriter
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.cache = cache
        self.writer = writer
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.http: aiohttp.ClientSession | None = None
        self.slots = webhook.Slots()  # a school's hung receivers hold only its own slots

    def start(self) -> None:
        self.http = webhook.session(self.settings.egress_allowlist())

    async def cancel_all(self) -> None:
        """Stop every delivery (a replica standing by delivers nothing)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.cancel_all()
        if self.http is not None:
            await self.http.close()

    def maybe_deliver(self, rj: CachedRJ) -> None:
        if rj.uid in self.tasks or not delivery_due(rj, self.settings.webhook_max_attempts):
            return
        task = asyncio.create_task(self._deliver(rj.uid), name=f"rollcall-webhook-{rj.uid}")
        self.tasks[rj.uid] = task

    def cancel(self, uid: str) -> None:
        if (task := self.tasks.pop(uid, None)) is not None:
            task.cancel()

    async def _deliver(self, uid: str) -> None:
        """POST until delivered, refused or out of attempts."""
        try:
            await self._attempts(uid)
        except ApiException as e:
            log.warning("webhook status of %s not written: %s", uid, e.status)
        finally:
            self.tasks.pop(uid, None)

    async def _attempts(self, uid: str) -> None:
        s = self.settings
        rj = self.cache.get(uid)
        if rj is None or rj.spec is None or rj.spec.callback is None:
            return
        url, attempts = rj.spec.callback.url, rj.webhook.attempts
        while attempts < s.webhook_max_attempts:
            if (rj := self.cache.get(uid)) is None:
                return
            attempts += 1
            sending = {"delivered": False, "attempts": attempts, "lastAttemptTime": now_iso()}
            if not await self.writer.write(rj, {"webhook": sending}):
                return
            result = await self._post(rj, url)
            record = {**sending, **attempt_record(attempts, result, s.webhook_max_attempts)}
            await self.writer.write(self.cache.get(uid) or rj, {"webhook": record})
            if result.delivered:
                metrics.WEBHOOK_DELIVERIES.inc()
                post_event(rj.body, "Normal", "WebhookDelivered", f"answered {result.status}")
                return
            metrics.WEBHOOK_FAILURES.labels("true" if record["final"] else "false").inc()
            if record["final"]:
                post_event(
                    rj.body, "Warning", "WebhookFailed", f"{result.error} after {attempts} attempts"
                )
                return
            await asyncio.sleep(
                webhook.backoff(attempts, s.webhook_backoff_seconds, s.webhook_backoff_max_seconds)
            )

    async def _post(self, rj: CachedRJ, url: str) -> webhook.Attempt:
        s = self.settings
        try:
            # the RJ's own namespace's Secret, by a name the RJ cannot choose
            secret = await self.kube.read_secret_key(
                rj.namespace, s.webhook_secret_name, s.webhook_secret_key
            )
        except (ApiException, KeyError) as e:
            log.warning("webhook secret of %s unavailable: %s", rj.namespace,
                        getattr(e, "status", "missing key"))  # fmt: skip
            return webhook.Attempt(None, "the namespace's signing secret is missing", retry=True)
        assert self.http is not None, "start() opens the session"
        async with self.slots(rj.namespace):
            return await webhook.post(
                self.http, url, webhook.payload(rj.body), allow=s.egress_allowlist(), secret=secret,
                delivery=rj.uid, timestamp=str(int(time.time())),
                timeout=s.webhook_timeout_seconds, max_response_bytes=s.webhook_max_response_bytes,
            )  # fmt: skip
