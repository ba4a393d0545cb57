"""Many event streams from one school: apiserver watches held, and what other calls then cost.

Starts etcd + kube-apiserver on loopback, the RecognitionJob CRD, a redis-server and the API as its
own process (``python -m rollcall_api``, as deployed, stream cap off). It times a GET of a job and
``/readyz`` with no stream open, then opens N event streams on N jobs of one namespace (one key)
and times the same calls again, side by side in one run. Before the shared watch each stream held
its own apiserver watch (one of the API's ~100 connections); now the namespace holds one.

Prints the apiserver's own count of open WATCH requests on recognitionjobs with N streams open,
and the ratio of median latencies (N streams / none). Usage:
``python bench/bench_api_streams.py [--streams 150] [--calls 40]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config

from apirig import write_key_file
from localk8s import control_plane, install_crds, wait_for
from redisrig import free_port, redis_server

REPO = Path(__file__).resolve().parent.parent

BODY = {"classCode": "7B", "images": {"claimName": "photos"}, "roster": ["s-1"]}


@contextlib.contextmanager
def api_process(env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollcall_api"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200, "API ready", 60)
        yield
    finally:
        proc.terminate()
        proc.wait(15)


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status)


def apiserver_watches(api: Any) -> float:
    method, url, headers, body, _ = api.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    resp = api.call_api(method, url, header_params=headers, body=body)
    resp.read()
    total = 0.0
    for line in (resp.data or b"").decode().splitlines():
        if (
            line.startswith("apiserver_longrunning_requests{")
            and 'resource="recognitionjobs"' in line
            and 'verb="WATCH"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def timed_calls(
    http: httpx.AsyncClient, job: str, auth: dict[str, str], n: int
) -> tuple[float, int]:
    """Median seconds of n sequential (GET job, GET /readyz) pairs, and how many pairs failed."""
    took, failed = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        a = await http.get(f"/v1/recognition-jobs/{job}", headers=auth)
        b = await http.get("/readyz")
        took.append(time.perf_counter() - t0)
        failed += a.status_code != 200 or b.status_code != 200
    return statistics.median(took), failed


async def run(url: str, key: str, api: Any, streams: int, calls: int) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        jobs = []
        for _ in range(streams):
            made = await http.post("/v1/recognition-jobs", json=BODY, headers=auth)
            assert made.status_code == 202, made.text
            jobs.append(made.json()["id"])
        await timed_calls(http, jobs[0], auth, 5)  # warm up
        before = apiserver_watches(api)
        idle, idle_failed = await timed_calls(http, jobs[0], auth, calls)
        opened = 0
        async with contextlib.AsyncExitStack() as stack:
            for job in jobs:
                resp = await stack.enter_async_context(
                    http.stream("GET", f"/v1/recognition-jobs/{job}/events", headers=auth)
                )
                if resp.status_code != 200:
                    continue
                opened += 1
                lines = resp.aiter_lines()
                stack.push_async_callback(lines.aclose)  # type: ignore[attr-defined]
                while not (await anext(lines)).startswith("event: snapshot"):
                    pass
            held = apiserver_watches(api) - before
            busy, busy_failed = await timed_calls(http, jobs[0], auth, calls)
    print(f"rollcall API event streams benchmark: {streams} streams asked, one key, one namespace")
    print(f"  streams opened: {opened}; apiserver WATCH requests they hold: {held:g}")
    print(
        f"  GET job + /readyz median: {idle * 1000:.1f} ms idle ({idle_failed}/{calls} failed), "
        f"{busy * 1000:.1f} ms with the streams open ({busy_failed}/{calls} failed)"
    )
    print(f"  ratio (with streams / none): {busy / idle:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollcall-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with (
            control_plane(tmp / "cp", controller_manager=False, scheduler=False) as cp,
            redis_server(tmp / "redis") as redis,
        ):
            api: Any = config.new_client_from_config(config_file=str(cp.kubeconfig))  # type: ignore[no-untyped-call]
            install_crds(api, REPO / "charts" / "rollcall" / "crds")
            ns = "bench-streams"
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=ns))
            )
            key = write_key_file(tmp / "keys.yaml", {"bench": [ns]})["bench"]
            port = free_port()
            env = {
                "ROLLCALL_API_KUBECONFIG": str(cp.kubeconfig),
                "ROLLCALL_API_KEYS_FILE": str(tmp / "keys.yaml"),
                "ROLLCALL_API_REDIS_URL": redis.url,
                "ROLLCALL_API_HOST": "127.0.0.1",
                "ROLLCALL_API_PORT": str(port),
                "ROLLCALL_API_LOG_LEVEL": "warning",
                "ROLLCALL_API_SUBMISSIONS_PER_MINUTE": "0",
                "ROLLCALL_API_STREAMS_PER_KEY": "0",
            }
            with api_process(env, port, tmp / "api.log"):
                asyncio.run(run(f"http://127.0.0.1:{port}", key, api, args.streams, args.calls))


if __name__ == "__main__":
    main()
