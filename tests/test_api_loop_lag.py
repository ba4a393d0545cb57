"""The API's event loop never blocks: a lag probe runs beside 50 concurrent clients.

Every request here goes through the real apiserver and Redis. A blocking call (a sync client, file
I/O, CPU-bound work) shows as one loop step far longer than any await-only handler takes. Each step
is timed in wall time, thread CPU time and voluntary context switches: a step that sleeps in a
syscall or burns CPU is a blocking call; one that was merely preempted (these CI machines are shared
and small) is not. A deliberately blocking route proves the probe catches one.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from apirig import api_settings
from rollcall_api.app import create_app

BODY = {
    "classCode": "9A",
    "images": {"claimName": "photos", "subPath": "p"},
    "roster": ["s-1", "s-2"],
}
# One loop step longer than this is a blocking call: await-only handlers take a few ms.
SLOW_STEP = 0.1


@dataclass
class LagProbe:
    """Sleeps a few ms in a loop and records how late it wakes up."""

    interval: float = 0.005
    lags: list[float] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(loop.time() - start - self.interval)

    def percentile(self, q: float) -> float:
        lags = sorted(self.lags)
        return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else 0.0


@dataclass
class Step:
    wall: float
    cpu: float
    voluntary_switches: int
    what: str


@contextlib.contextmanager
def timed_steps(threshold: float) -> Iterator[list[Step]]:
    """Time every loop callback on this thread; collect those longer than ``threshold``."""
    slow: list[Step] = []
    original = asyncio.events.Handle._run
    loop_thread = threading.get_ident()

    def _run(handle: asyncio.events.Handle) -> None:
        if threading.get_ident() != loop_thread:
            original(handle)
            return
        ru0, cpu0, t0 = (
            resource.getrusage(resource.RUSAGE_THREAD),
            time.thread_time(),
            time.perf_counter(),
        )
        try:
            original(handle)
        finally:
            wall = time.perf_counter() - t0
            if wall > threshold:
                ru1 = resource.getrusage(resource.RUSAGE_THREAD)
                slow.append(
                    Step(
                        wall,
                        time.thread_time() - cpu0,
                        ru1.ru_nvcsw - ru0.ru_nvcsw,
                        repr(handle)[:300],
                    )
                )

    asyncio.events.Handle._run = _run  # type: ignore[method-assign,assignment]
    try:
        yield slow
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]


def blocking(steps: list[Step]) -> list[Step]:
    """Steps that slept in a syscall or burned CPU; preemption by other processes does neither."""
    return [s for s in steps if s.voluntary_switches > 0 or s.cpu > SLOW_STEP / 2]


@dataclass
class Rig:
    app: FastAPI
    http: httpx.AsyncClient
    auth: dict[str, str]


@pytest.fixture
async def rig(
    tmp_path: Path, kubeconfig: Path, redis_url: str, crds: list[str], namespace: str
) -> AsyncIterator[Rig]:
    settings, issued = api_settings(
        tmp_path,
        kubeconfig,
        redis_url,
        {"north": [namespace]},
        keys_reload_seconds=0.05,  # the key reloader runs throughout the load, too
        submissions_per_minute=0,  # this load is one school's on purpose: no rate limit here
    )
    app = create_app(settings)

    @app.get("/test-only/block", include_in_schema=False)
    async def block() -> dict[str, str]:
        time.sleep(0.3)  # the bug this test exists to catch
        return {}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield Rig(app, http, {"Authorization": f"Bearer {issued['north']}"})


async def _under_load(
    rig: Rig, extra: Callable[[], Awaitable[object]] | None
) -> tuple[LagProbe, list[Step], list[int]]:
    """Fire 50 concurrent clients (health, submit, read, list) while the probe runs."""
    created: list[str] = []
    statuses: list[int] = []

    async def client(i: int) -> None:
        for j in range(6):
            kind = (i + j) % 4
            if kind == 0:
                r = await rig.http.get("/healthz")
            elif kind == 1:
                r = await rig.http.post("/v1/recognition-jobs", json=BODY, headers=rig.auth)
                if r.status_code == 202:
                    created.append(r.json()["id"])
            elif kind == 2 and created:
                r = await rig.http.get(f"/v1/recognition-jobs/{created[-1]}", headers=rig.auth)
            else:
                r = await rig.http.get("/v1/recognition-jobs?limit=5", headers=rig.auth)
            statuses.append(r.status_code)

    # A warm server: first-use work (lazy imports, TLS handshakes to the apiserver) is not load.
    await asyncio.gather(*(client(i) for i in range(4)))
    created.clear()
    statuses.clear()
    probe = LagProbe()
    task = asyncio.create_task(probe.run())
    try:
        with timed_steps(SLOW_STEP) as slow:
            await asyncio.sleep(0.05)
            work: list[Awaitable[object]] = [client(i) for i in range(50)]
            if extra is not None:
                work.append(extra())
            await asyncio.gather(*work)
    finally:
        task.cancel()
    return probe, slow, statuses


async def test_no_blocking_call_under_concurrent_load(rig: Rig) -> None:
    probe, slow, statuses = await _under_load(rig, None)
    print(
        f"loop lag p50 {probe.percentile(0.5) * 1000:.1f} ms, p99 {probe.percentile(0.99) * 1000:.1f}"
        f" ms, max {probe.percentile(1) * 1000:.1f} ms; steps > {SLOW_STEP * 1000:.0f} ms: "
        f"{[(round(s.wall * 1000), round(s.cpu * 1000), s.voluntary_switches) for s in slow]}"
    )
    assert set(statuses) <= {200, 202}, statuses
    assert statuses.count(202) >= 70
    assert not blocking(slow), blocking(slow)
    # No lag figure is asserted: on shared runners the scheduler preempts the loop for tens of ms
    # (a p50 of 39 ms was seen on a busy 2-core machine with nothing blocking). A blocking call is
    # caught above, step by step, by its wall time against its CPU time; figures go to the bench.


async def test_the_probe_catches_a_blocking_call(rig: Rig) -> None:
    probe, slow, _ = await _under_load(rig, lambda: rig.http.get("/test-only/block"))
    assert probe.percentile(1) >= 0.25
    caught = blocking(slow)
    assert caught and any(s.wall >= 0.3 and s.voluntary_switches > 0 for s in caught), slow
