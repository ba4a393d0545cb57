"""The server-sent event stream of one job: its namespace's shared watch, plus Redis progress.

The operator folds progress into the RJ status at its own pace; between watch events the stream
polls the job's progress hash so a watching teacher sees the bar move. The watch is shared by every
stream of the namespace (:mod:`rollcall_api.watches`), and each stream holds one of its key's
stream slots (:class:`rollcall_api.limits.Slots`) until it ends, whichever way it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from rollcall_api import service
from rollcall_api.errors import ApiError
from rollcall_api.kube import RecognitionJobs
from rollcall_api.limits import Lease
from rollcall_api.schemas import JobView, ProgressOut
from rollcall_api.settings import Settings
from rollcall_api.store import Store
from rollcall_api.watches import RESYNC, WatchHub, is_newer
from rollcall_contract.model import TERMINAL_PHASES, Phase

log = logging.getLogger("rollcall_api.events")


def sse(event: str, data: Any, event_id: int) -> str:
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n"


def _advances(p: tuple[int, int], view: JobView) -> bool:
    return p[0] >= view.progress.done and p != (view.progress.done, view.progress.total)


def _dump(view: JobView) -> dict[str, Any]:
    return view.model_dump(by_alias=True, mode="json", exclude={"spec"})


async def job_events(
    jobs: RecognitionJobs,
    store: Store,
    hub: WatchHub,
    obj: dict[str, Any],
    settings: Settings,
    lease: Lease,
) -> AsyncIterator[str]:
    try:
        async for chunk in _job_events(jobs, store, hub, obj, settings):
            yield chunk
    finally:
        lease.release()


async def _job_events(
    jobs: RecognitionJobs, store: Store, hub: WatchHub, obj: dict[str, Any], settings: Settings
) -> AsyncIterator[str]:
    meta = obj.get("metadata") or {}
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid", ""))
    rv = str(meta.get("resourceVersion", ""))
    base = settings.public_url
    view = await service.view_with_progress(store, obj, base)
    seq = 1
    yield sse("snapshot", _dump(view), seq)
    if view.phase in TERMINAL_PHASES:
        yield sse("end", _dump(view), seq + 1)
        return

    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    async with hub.subscribe(namespace, name) as queue:
        while True:
            try:
                etype, new = await asyncio.wait_for(
                    queue.get(), timeout=settings.events_poll_seconds
                )
            except TimeoutError:
                p = await store.progress(namespace, uid) if view.phase is Phase.RUNNING else None
                if p is not None and _advances(p, view):
                    view.progress = ProgressOut(done=p[0], total=p[1])
                    seq += 1
                    yield sse("progress", view.progress.model_dump(), seq)
                    last_sent = loop.time()
                    continue
                if loop.time() - last_sent >= settings.events_keepalive_seconds:
                    yield ": keep-alive\n\n"
                    last_sent = loop.time()
                continue
            if etype == RESYNC:  # joined, or the watch restarted: re-read what may have changed
                try:
                    fresh = await jobs.get(namespace, name)
                except ApiError as exc:
                    log.warning("job not re-read", extra={"job": name, "error": exc.message})
                    continue
                etype, new = ("DELETED", {}) if fresh is None else ("MODIFIED", fresh)
            if etype == "DELETED":
                seq += 1
                yield sse("deleted", {"id": name, "phase": str(Phase.CANCELLED)}, seq)
                return
            new_rv = str((new.get("metadata") or {}).get("resourceVersion", ""))
            if not is_newer(new_rv, rv):
                continue  # the re-read already showed this (or a later) version
            rv = new_rv
            previous = view
            view = service.job_view(new, base)
            if view.progress.done < previous.progress.done and view.phase is Phase.RUNNING:
                view.progress = previous.progress  # the RJ status lags the Redis progress
            if view.phase != previous.phase:
                seq += 1
                yield sse(
                    "phase",
                    {"phase": str(view.phase), "reason": view.reason, "message": view.message},
                    seq,
                )
            if (view.progress.done, view.progress.total) != (
                previous.progress.done,
                previous.progress.total,
            ):
                seq += 1
                yield sse("progress", view.progress.model_dump(), seq)
            last_sent = loop.time()
            if view.phase in TERMINAL_PHASES:
                seq += 1
                yield sse("end", _dump(view), seq)
                return
