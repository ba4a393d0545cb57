"""Submissions per second through the rollcall API into a real apiserver, with event-loop lag.

Starts etcd + kube-apiserver on loopback (hack/localk8s.py; no controller-manager or scheduler:
nothing here needs them), installs the RecognitionJob CRD, a redis-server, and the API as its own
process (``python -m rollcall_api``, one uvicorn worker, as deployed). Closed-loop clients then
POST /v1/recognition-jobs as fast as the API answers, first without and then with an
Idempotency-Key (one Redis SET NX more per request).

Prints submissions/s, latency p50/p99, the API process's CPU, and its event-loop lag (from its own
``rollcall_api_event_loop_lag_seconds`` histogram). Target: >= 300 submissions/s on 2 cores.
Usage: ``python bench/bench_api_submit.py [--clients 32] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml
from kubernetes import client, config, utils

from apirig import write_key_file
from localk8s import control_plane, wait_for
from redisrig import free_port, redis_server

REPO = Path(__file__).resolve().parent.parent

BODY = {
    "classCode": "7B-maths",
    "images": {"claimName": "photos", "subPath": "2026-11-27/p1"},
    "roster": [f"s-{i:03d}" for i in range(30)],
}


def install_crds(kubeconfig: Path) -> Any:
    api: Any = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    ext: Any = client.ApiextensionsV1Api(api)
    for path in sorted((REPO / "charts" / "rollcall" / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                with contextlib.suppress(utils.FailToCreateError):
                    utils.create_from_dict(api, doc)  # type: ignore[no-untyped-call]
                name = str(doc["metadata"]["name"])

                def established(n: str = name) -> bool:
                    conditions = ext.read_custom_resource_definition(n).status.conditions or []
                    return any(c.type == "Established" and c.status == "True" for c in conditions)

                wait_for(established, f"CRD {name}")
    return api


@contextlib.contextmanager
def api_process(env: dict[str, str], port: int, log: Path) -> Iterator[psutil.Process]:
    """The API as deployed: ``python -m rollcall_api`` in its own process."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollcall_api"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200, "API ready", 60)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)


def _get(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status)


def lag_histogram(url: str) -> dict[float, float]:
    """Cumulative bucket counts of the API's event-loop lag histogram (le -> count)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("rollcall_api_event_loop_lag_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def lag_summary(before: dict[float, float], after: dict[float, float]) -> str:
    """p50/p99/max bucket of the lag samples taken between two scrapes (upper bucket bounds)."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1]
    if total <= 0:
        return "no samples"

    def q(frac: float) -> str:
        le = next(le for le, c in delta if c >= frac * total)
        return "inf" if le == float("inf") else f"<= {le * 1000:g} ms"

    worst = next(le for le, c in delta if c >= total)
    return f"p50 {q(0.5)}, p99 {q(0.99)}, max {'inf' if worst == float('inf') else f'<= {worst * 1000:g} ms'} ({int(total)} samples)"


async def load(
    url: str, key: str, clients: int, seconds: float, idem: bool
) -> tuple[int, list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=url, connector=conn, headers=headers) as http:

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                extra = {"Idempotency-Key": uuid.uuid4().hex} if idem else {}
                t0 = time.perf_counter()
                async with http.post("/v1/recognition-jobs", json=BODY, headers=extra) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - t0)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(client_loop() for _ in range(clients)))
    return statuses.get(202, 0), latencies, statuses


async def load_direct(
    kubeconfig: Path, ns: str, clients: int, seconds: float
) -> tuple[int, list[float], dict[int, int]]:
    """The apiserver's own pace: the same creates straight from an async client, no API between."""
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig

    api = await aconfig.new_client_from_config(config_file=str(kubeconfig))
    objects = aclient.CustomObjectsApi(api)
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds

    async def client_loop() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            body = {
                "apiVersion": "rollcall.io/v1alpha1",
                "kind": "RecognitionJob",
                "metadata": {"generateName": "direct-"},
                "spec": BODY,
            }
            t0 = time.perf_counter()
            await objects.create_namespaced_custom_object(
                "rollcall.io", "v1alpha1", ns, "recognitionjobs", body
            )
            latencies.append(time.perf_counter() - t0)
            count += 1

    try:
        await asyncio.gather(*(client_loop() for _ in range(clients)))
    finally:
        await api.close()
    return count, latencies, {201: count}


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollcall-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with (
            control_plane(tmp / "cp", controller_manager=False, scheduler=False) as cp,
            redis_server(tmp / "redis") as redis,
        ):
            api = install_crds(cp.kubeconfig)
            ns = "bench-submit"
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=ns))
            )
            key = write_key_file(tmp / "keys.yaml", {"bench": [ns]})["bench"]
            port, metrics_port = free_port(), free_port()
            env = {
                # The bench measures the API's own cost: no per-school submission limit.
                "ROLLCALL_API_SUBMISSIONS_PER_MINUTE": "0",
                "ROLLCALL_API_METRICS_PORT": str(metrics_port),
                "ROLLCALL_API_KUBECONFIG": str(cp.kubeconfig),
                "ROLLCALL_API_KEYS_FILE": str(tmp / "keys.yaml"),
                "ROLLCALL_API_REDIS_URL": redis.url,
                "ROLLCALL_API_HOST": "127.0.0.1",
                "ROLLCALL_API_PORT": str(port),
                "ROLLCALL_API_LOG_LEVEL": "warning",
            }
            url = f"http://127.0.0.1:{port}"
            metrics_url = f"http://127.0.0.1:{metrics_port}"
            rates: dict[str, float] = {}
            with api_process(env, port, tmp / "api.log") as proc:
                asyncio.run(load(url, key, 4, 2.0, False))  # warm up connections and caches
                print(
                    f"rollcall API submit benchmark: {args.clients} closed-loop clients, "
                    f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs"
                )
                control = [psutil.Process(p.pid) for p in cp.processes.values()]
                me = psutil.Process()
                # The baseline runs first and last: the pair brackets any drift of this machine.
                for phase in ("direct", "plain", "idempotent", "direct again"):
                    before, cpu0 = lag_histogram(metrics_url), proc.cpu_times()
                    cp0, me0 = cpu_seconds(control), cpu_seconds([me])
                    t0 = time.perf_counter()
                    if phase.startswith("direct"):
                        run = load_direct(cp.kubeconfig, ns, args.clients, args.seconds)
                    else:
                        run = load(url, key, args.clients, args.seconds, phase == "idempotent")
                    ok, lat, statuses = asyncio.run(run)
                    wall = time.perf_counter() - t0
                    cpu1, after = proc.cpu_times(), lag_histogram(metrics_url)
                    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
                    rates[phase] = ok / wall
                    label = {
                        "direct": "apiserver direct",
                        "direct again": "apiserver direct",
                        "plain": "via API",
                        "idempotent": "via API + Idem-Key",
                    }[phase]
                    print(
                        f"  {label:20s} {ok / wall:7.1f} creates/s  latency p50 "
                        f"{pct(lat, 0.5) * 1000:.1f} ms p99 {pct(lat, 0.99) * 1000:.1f} ms  CPU: "
                        f"API {cpu / wall * 100:.0f}%, control plane "
                        f"{(cpu_seconds(control) - cp0) / wall * 100:.0f}%, load generator "
                        f"{(cpu_seconds([me]) - me0) / wall * 100:.0f}%  {statuses}"
                    )
                    if not phase.startswith("direct"):
                        print(f"  {'':20s} API event-loop lag {lag_summary(before, after)}")
                direct = (rates["direct"] + rates["direct again"]) / 2
                print(
                    f"  ratio via API / direct (mean of both): {rates['plain'] / direct:.2f} "
                    f"(plain), {rates['idempotent'] / direct:.2f} (idempotent); "
                    f"load average {os.getloadavg()[0]:.1f}"
                )
            listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
                "rollcall.io", "v1alpha1", ns, "recognitionjobs", limit=1
            )
            remaining = listed["metadata"].get("remainingItemCount", 0) + len(listed["items"])
            print(
                f"  RecognitionJobs stored: {remaining}; target >= 300 submissions/s via the API: "
                f"{'met' if rates['plain'] >= 300 else 'NOT met'} ({rates['plain']:.0f}/s plain, "
                f"{rates['idempotent']:.0f}/s with Idempotency-Key)"
            )
            api.close()


if __name__ == "__main__":
    main()
