"""Per-school limits: the pure buckets and slots, then against the real apiserver and Redis.

One school's flood gets 429 + Retry-After while another school still submits and ``/healthz``
still answers; streams over a key's cap get 429; many streams of a namespace share one apiserver
watch (counted by the apiserver itself); a malformed key file revokes every key until it is fixed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from kubernetes import client

from apirig import free_port, serve_in_thread, write_key_file
from rollcall_api.app import create_app
from rollcall_api.auth import hash_key
from rollcall_api.limits import RateLimiter, Slots, SlotsExhausted
from rollcall_api.logs import JsonFormatter
from rollcall_api.settings import Settings
from rollcall_api.watches import is_newer

BODY: dict[str, Any] = {
    "classCode": "7B-maths",
    "images": {"claimName": "photos", "subPath": "2026-11-27/period-1"},
    "roster": ["s-001", "s-002"],
}


# --- pure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_minute", "burst", "times", "waits"),
    [
        # 1 per second, 2 at once: the third at t=0 waits 1 s; half a token still means "1 s".
        (60, 2, [0, 0, 0, 0.5, 1.0, 1.0], [0, 0, 1, 1, 0, 1]),
        # 6 a minute, 1 at once: a token every 10 s, and a refused call takes nothing.
        (6, 1, [0, 0, 5, 10, 10], [0, 10, 5, 0, 10]),
        # A long idle time refills only up to the burst.
        (60, 2, [0, 1000, 1000, 1000], [0, 0, 0, 1]),
        # 0: unlimited.
        (0, 1, [0, 0, 0, 0], [0, 0, 0, 0]),
    ],
)
def test_token_bucket_waits(
    per_minute: float, burst: int, times: list[float], waits: list[int]
) -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute, burst, clock=lambda: now[0])
    got = []
    for t in times:
        now[0] = t
        got.append(limiter.check("north"))
    assert got == waits


def test_schools_have_their_own_buckets_and_idle_ones_are_forgotten() -> None:
    now = [0.0]
    limiter = RateLimiter(60, 1, clock=lambda: now[0], max_idle=2)
    assert limiter.check("north") == 0 and limiter.check("north") == 1
    assert limiter.check("south") == 0  # north's flood does not touch south
    now[0] = 10.0  # both buckets are full again: a third school makes room by forgetting them
    assert limiter.check("east") == 0
    assert len(limiter) == 1


@pytest.mark.parametrize(
    ("limit", "ops", "held"),
    [
        (2, ["+a", "+a", "!a", "+b", "-a", "+a"], {"a": 2, "b": 1}),
        (1, ["+a", "-a", "-a", "+a", "!a"], {"a": 1}),  # a second release of one lease counts once
        (0, ["+a"] * 5, {"a": 5}),  # 0: unlimited
    ],
)
def test_stream_slots(limit: int, ops: list[str], held: dict[str, int]) -> None:
    slots = Slots(limit)
    leases: dict[str, list[Any]] = {}
    for op in ops:
        kind, key = op[0], op[1:]
        if kind == "+":
            leases.setdefault(key, []).append(slots.acquire(key))
        elif kind == "!":
            with pytest.raises(SlotsExhausted):
                slots.acquire(key)
        else:  # "-": release the key's first lease (again, if it was released before)
            leases[key][0].release()
    assert {k: slots.held(k) for k in held} == held
    assert slots.total() == sum(held.values())


@pytest.mark.parametrize(
    ("candidate", "current", "newer"),
    [
        ("12", "9", True),
        ("9", "12", False),
        ("12", "12", False),
        ("abc", "12", True),
        ("", "", False),
    ],
)
def test_resource_versions_compare_as_numbers_when_they_are(
    candidate: str, current: str, newer: bool
) -> None:
    assert is_newer(candidate, current) is newer


# --- against the real apiserver and Redis -------------------------------------------------------


@pytest.fixture
def schools(
    tmp_path: Path, kubeconfig: Path, redis_url: str, crds: list[str], namespace: str
) -> tuple[Settings, dict[str, str]]:
    """north and south share the test namespace (same apiserver, same class codes)."""
    issued = write_key_file(tmp_path / "keys.yaml", {"north": [namespace], "south": [namespace]})
    settings = Settings(
        kubeconfig=kubeconfig,
        keys_file=tmp_path / "keys.yaml",
        redis_url=redis_url,
        keys_reload_seconds=0,
        events_poll_seconds=0.2,
        events_keepalive_seconds=0.3,
        submissions_per_minute=6,
        submissions_burst=3,
        streams_per_key=3,
        watch_linger_seconds=0,
        metrics_port=free_port(),
    )
    return settings, issued


async def _app(settings: Settings, stack: AsyncExitStack) -> tuple[FastAPI, httpx.AsyncClient]:
    app = create_app(settings)
    await stack.enter_async_context(app.router.lifespan_context(app))
    http = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    )
    return app, http


@pytest.fixture
async def api(schools: tuple[Settings, dict[str, str]]) -> AsyncIterator[tuple[FastAPI, Any]]:
    async with AsyncExitStack() as stack:
        yield await _app(schools[0], stack)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_one_schools_flood_is_refused_while_another_school_still_submits(
    api: tuple[FastAPI, httpx.AsyncClient], schools: tuple[Settings, dict[str, str]]
) -> None:
    app, http = api
    _, issued = schools
    flood = [
        http.post("/v1/recognition-jobs", json=BODY, headers=bearer(issued["north"]))
        for _ in range(12)
    ]
    probes = [http.get("/healthz") for _ in range(5)]
    answers = await asyncio.gather(*flood, *probes)
    north, health = answers[:12], answers[12:]
    codes = sorted(r.status_code for r in north)
    assert codes == [202] * 3 + [429] * 9, codes  # the burst, then the bucket is dry
    for refused in (r for r in north if r.status_code == 429):
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limited"
    assert all(h.status_code == 200 and h.json()["status"] == "ok" for h in health)
    # The probe shares nothing with the flood: not even a metric (or its lock) is touched.
    routes = {
        s.labels.get("route") for m in app.state.metrics.requests.collect() for s in m.samples
    }
    assert "/v1/recognition-jobs" in routes and "/healthz" not in routes

    south = await http.post("/v1/enrollments", json=BODY, headers=bearer(issued["south"]))
    assert south.status_code == 202, south.text
    again = await http.post("/v1/recognition-jobs", json=BODY, headers=bearer(issued["north"]))
    assert again.status_code == 429


def apiserver_watches(k8s_api: client.ApiClient) -> float:
    """Open WATCH requests on recognitionjobs, as the apiserver itself counts them."""
    method, url, headers, body, _ = k8s_api.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    resp = k8s_api.call_api(method, url, header_params=headers, body=body)
    resp.read()  # type: ignore[no-untyped-call]
    total = 0.0
    for line in (resp.data or b"").decode().splitlines():
        if (
            line.startswith("apiserver_longrunning_requests{")
            and 'resource="recognitionjobs"' in line
            and 'verb="WATCH"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def our_gauge(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def _open_stream(
    http: httpx.AsyncClient, stack: AsyncExitStack, job: str, key: str
) -> httpx.Response:
    """Open an event stream and read its snapshot (so the server holds the stream).

    The line iterator is kept open with the stream: dropping a half-read iterator closes the
    connection, and the server would then (rightly) give the stream's slot back."""
    resp = await stack.enter_async_context(
        http.stream("GET", f"/v1/recognition-jobs/{job}/events", headers=bearer(key))
    )
    if resp.status_code == 200:
        lines = resp.aiter_lines()
        stack.push_async_callback(lines.aclose)  # type: ignore[attr-defined]
        while not (await anext(lines)).startswith("event: snapshot"):
            pass
    return resp


async def _until(predicate: Any, what: str) -> None:
    """Wait for a condition the server reaches on its own time (not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_streams_share_one_watch_and_a_key_over_its_cap_gets_429(
    schools: tuple[Settings, dict[str, str]], k8s_api: client.ApiClient
) -> None:
    settings, issued = schools
    settings = settings.model_copy(update={"submissions_per_minute": 0})
    before = apiserver_watches(k8s_api)
    with serve_in_thread(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            jobs = []
            for _ in range(4):
                made = await http.post(
                    "/v1/recognition-jobs", json=BODY, headers=bearer(issued["north"])
                )
                assert made.status_code == 202, made.text
                jobs.append(made.json()["id"])
            async with AsyncExitStack() as streams:
                opened = [await _open_stream(http, streams, j, issued["north"]) for j in jobs[:3]]
                assert [r.status_code for r in opened] == [200, 200, 200]
                over = await _open_stream(http, streams, jobs[3], issued["north"])
                assert over.status_code == 429
                await over.aread()
                assert "open event streams" in over.json()["error"]["message"]
                # The cap is per key: south's streams on the same jobs are its own.
                theirs = [await _open_stream(http, streams, j, issued["south"]) for j in jobs[1:]]
                assert all(r.status_code == 200 for r in theirs)
                # Six streams of one namespace, one watch: the apiserver sees one more WATCH.
                await _until(
                    lambda: our_gauge(settings.metrics_port, "rollcall_api_watches") == 1,
                    "the shared watch started",
                )
                assert our_gauge(settings.metrics_port, "rollcall_api_event_streams") == 6
                assert apiserver_watches(k8s_api) - before == 1
            # Streams closed by the client give their slots back (the next write notices).
            await _until(
                lambda: our_gauge(settings.metrics_port, "rollcall_api_event_streams") == 0,
                "closed streams released",
            )
            async with AsyncExitStack() as streams:
                again = await _open_stream(http, streams, jobs[3], issued["north"])
                assert again.status_code == 200
    await _until(lambda: apiserver_watches(k8s_api) == before, "the watch closed with its streams")


def _keys_sharing_a_key_id() -> tuple[str, str]:
    """Two API keys whose digests start with the same 8 hex digits (the logged ``key_id``): a
    birthday search over a fixed sequence, so the same pair every run (~10^5 hashes)."""
    seen: dict[str, str] = {}
    for i in range(2_000_000):
        key = f"rc-key-id-twin-{i}"
        prefix = hash_key(key)[:8]
        if prefix in seen:
            return seen[prefix], key
        seen[prefix] = key
    raise AssertionError("no two keys share a key_id")


async def test_two_schools_whose_keys_share_a_key_id_keep_their_own_stream_caps(
    schools: tuple[Settings, dict[str, str]], namespace: str
) -> None:
    """The stream cap is per key, and ``key_id`` is only a digest prefix: north filling its cap
    must leave south's streams alone even when their keys share it (before: one count, so
    south got 429 for north's streams)."""
    settings, _ = schools
    settings = settings.model_copy(update={"submissions_per_minute": 0})
    north, south = _keys_sharing_a_key_id()
    settings.keys_file.write_text(
        f"{hash_key(north)}: {{school: north, namespaces: [{namespace}]}}\n"
        f"{hash_key(south)}: {{school: south, namespaces: [{namespace}]}}\n"
    )
    with serve_in_thread(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            made = await http.post("/v1/recognition-jobs", json=BODY, headers=bearer(north))
            assert made.status_code == 202, made.text
            job = made.json()["id"]
            async with AsyncExitStack() as streams:
                opened = [await _open_stream(http, streams, job, north) for _ in range(3)]
                assert [r.status_code for r in opened] == [200, 200, 200]
                over = await _open_stream(http, streams, job, north)
                assert over.status_code == 429
                await over.aread()
                theirs = await _open_stream(http, streams, job, south)
                assert theirs.status_code == 200


async def test_a_revoked_key_is_refused_after_a_malformed_key_file(
    api: tuple[FastAPI, httpx.AsyncClient],
    schools: tuple[Settings, dict[str, str]],
    namespace: str,
) -> None:
    app, http = api
    settings, issued = schools
    north, south = bearer(issued["north"]), bearer(issued["south"])
    assert (await http.get("/v1/recognition-jobs", headers=north)).status_code == 200

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("rollcall_api").addHandler(handler)
    try:
        # An edit meant to revoke north that broke the YAML: nobody gets in, not even north.
        settings.keys_file.write_text(f"{hash_key(issued['south'])}: {{school: south\n")
        await app.state.keys.reload()
    finally:
        logging.getLogger("rollcall_api").removeHandler(handler)
    for who in (north, south):
        refused = await http.get("/v1/recognition-jobs", headers=who)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "keys_unavailable"
    ready = await http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["keys"] == "not loaded"
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert any("refusing every key" in r["message"] for r in logged), logged
    assert issued["north"] not in lines.getvalue() and issued["south"] not in lines.getvalue()

    # The fixed file (north revoked): south is back, north stays out.
    settings.keys_file.write_text(
        f"{hash_key(issued['south'])}: {{school: south, namespaces: [{namespace}]}}\n"
    )
    await app.state.keys.reload()
    assert (await http.get("/v1/recognition-jobs", headers=south)).status_code == 200
    assert (await http.get("/v1/recognition-jobs", headers=north)).status_code == 401
