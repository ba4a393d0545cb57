"""One apiserver watch per namespace, fanned out to every event stream of that namespace.

Why: a watch holds one of the API's apiserver connections for as long as it runs (up to 300 s per
round). One watch per SSE stream let ~100 streams of one school take every connection of a replica
and stall every other call, ``/readyz`` included. Here a namespace with any open stream has exactly
one watch (on all its RecognitionJobs); each stream gets the events of its own job from a queue.

A stream is told ``RESYNC`` when it joins and whenever the watch restarts after an error or an
expired resourceVersion (410): it then re-reads its job once, so nothing that happened while nobody
watched is lost. Events may arrive older than what a stream already showed (a re-read can overtake
the watch): streams drop them with :func:`is_newer`. The watch stops ``linger`` seconds after its
last stream leaves, so a client that reconnects at once does not restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from rollcall_api.errors import ApiError
from rollcall_api.kube import RecognitionJobs

log = logging.getLogger("rollcall_api.watches")

RESYNC = "RESYNC"
Event = tuple[str, dict[str, Any]]


def is_newer(candidate: str, current: str) -> bool:
    """Whether an object at ``candidate`` resourceVersion may replace one at ``current``.

    resourceVersions are opaque to clients in general, but etcd's are integers; compare them as
    such when both parse, else treat any different version as newer.
    """
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


class NamespaceWatch:
    """The watch of one namespace and the queues of its streams, keyed by job name."""

    def __init__(self, hub: WatchHub, namespace: str) -> None:
        self.hub = hub
        self.namespace = namespace
        self.queues: dict[str, set[asyncio.Queue[Event]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.stopper: asyncio.TimerHandle | None = None
        self.watching = False

    def count(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def dispatch(self, etype: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        for queue in self.queues.get(name, ()):
            queue.put_nowait((etype, obj))

    def broadcast_resync(self) -> None:
        for queues in self.queues.values():
            for queue in queues:
                queue.put_nowait((RESYNC, {}))

    async def run(self) -> None:
        """Watch until cancelled; restart from a fresh resourceVersion after any failure."""
        jobs = self.hub.jobs
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await jobs.current_version(self.namespace)
                    self.broadcast_resync()
                self.watching = True
                self.hub.changed()
                async for etype, obj in jobs.watch(self.namespace, None, rv):
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    self.dispatch(etype, obj)
                continue  # the server ended this round (its timeout): resume from rv
            except ApiError as exc:
                if exc.status != 410:
                    log.warning(
                        "namespace watch interrupted",
                        extra={"namespace": self.namespace, "error": exc.message},
                    )
                    await asyncio.sleep(self.hub.retry_seconds)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "namespace watch interrupted",
                    extra={"namespace": self.namespace, "error": repr(exc)},
                )
                await asyncio.sleep(self.hub.retry_seconds)
            finally:
                self.watching = False
                self.hub.changed()
            rv = None


class WatchHub:
    """The namespace watches of this replica; ``watches()`` is how many are open right now."""

    def __init__(
        self,
        jobs: RecognitionJobs,
        linger: float,
        on_change: Callable[[WatchHub], None] | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self.jobs = jobs
        self.linger = linger
        self.on_change = on_change
        self.retry_seconds = retry_seconds
        self._namespaces: dict[str, NamespaceWatch] = {}

    def watches(self) -> int:
        return sum(1 for w in self._namespaces.values() if w.watching)

    def streams(self) -> int:
        return sum(w.count() for w in self._namespaces.values())

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    @contextlib.asynccontextmanager
    async def subscribe(self, namespace: str, name: str) -> AsyncIterator[asyncio.Queue[Event]]:
        """A queue of (type, object) events for one job; ``RESYNC`` first, then the watch's."""
        watch = self._namespaces.get(namespace)
        if watch is None:
            watch = self._namespaces[namespace] = NamespaceWatch(self, namespace)
        if watch.stopper is not None:
            watch.stopper.cancel()
            watch.stopper = None
        queue: asyncio.Queue[Event] = asyncio.Queue()
        queue.put_nowait((RESYNC, {}))
        watch.queues.setdefault(name, set()).add(queue)
        if watch.task is None or watch.task.done():
            watch.task = asyncio.create_task(watch.run(), name=f"watch-{namespace}")
        self.changed()
        try:
            yield queue
        finally:
            queues = watch.queues.get(name)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del watch.queues[name]
            if not watch.queues:
                self._schedule_stop(watch)
            self.changed()

    def _schedule_stop(self, watch: NamespaceWatch) -> None:
        def stop() -> None:
            watch.stopper = None
            if watch.queues:
                return
            if watch.task is not None:
                watch.task.cancel()
            if self._namespaces.get(watch.namespace) is watch:
                del self._namespaces[watch.namespace]

        if self.linger <= 0:
            stop()
        else:
            watch.stopper = asyncio.get_running_loop().call_later(self.linger, stop)

    async def close(self) -> None:
        tasks = [w.task for w in self._namespaces.values() if w.task is not None]
        for watch in self._namespaces.values():
            if watch.stopper is not None:
                watch.stopper.cancel()
        self._namespaces.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
