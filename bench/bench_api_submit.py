"""Submissions per second through the rollcall API into a real apiserver, with event-loop lag.

Starts etcd + kube-apiserver on loopback (hack/localk8s.py; no controller-manager or scheduler:
nothing here needs them), installs the RecognitionJob CRD, a redis-server, and the API as its own
process (``python -m rollcall_api``, one uvicorn worker, as deployed). Closed-loop clients then
POST /v1/recognition-jobs as fast as the API answers, first without and then with an
Idempotency-Key (one Redis SET NX more per request).

Phases run in rounds (direct, plain, idempotent), with one more direct phase at the end: each
round's API rates are divided by the mean of the direct phases either side of it, so drift of
this shared machine hits both sides of a ratio alike.

Prints submissions/s, latency p50/p99, the CPU of the API, the control plane and the load
generator, and the API's event-loop lag from its own histograms (probed every 10 ms here, so a
10 s phase has ~1000 samples): the whole lag, and its own share (less the loop thread's wait for a
CPU, ``rollcall_api.looplag``). Goals (#12): via the API >= 0.8 of direct, >= 0.7 with an
Idempotency-Key, loop lag p99 <= 10 ms.

The rounds run under two CPU set-ups (``apirig.cpu_setups``), each with its own figures: ``shared``
(every process on every CPU: the API competes with the control plane and the load generator, as
it never does on a cluster) and ``own-cpu`` (the API on one CPU with first claim on it, its session
at autogroup nice -20; all else on every CPU: the nearest this one machine comes to a pod with its
own CPU request). The API logs at info, as deployed (an access line a request).
Usage: ``python bench/bench_api_submit.py [--clients 32] [--seconds 10] [--rounds 2]
[--setups shared,own-cpu] [--log-level info]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
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

from apirig import apply_setup, cpu_setups, write_key_file
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
    """The API as deployed: ``python -m rollcall_api`` in its own process, and its own session
    (as a pod has its own cgroup; ``apirig.CpuSetup`` sets that session's priority)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollcall_api"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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


LAG = "rollcall_api_event_loop_lag_seconds"
LAG_OWN = "rollcall_api_event_loop_lag_own_seconds"


def lag_histograms(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts (le -> count) of the API's two event-loop lag histograms."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[float, float]] = {LAG: {}, LAG_OWN: {}}
    for line in text.splitlines():
        name = line.split("{", 1)[0].removesuffix("_bucket")
        if line.startswith(f"{name}_bucket") and name in out:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[name][float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def lag_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """p50/p99/max of the samples taken between two scrapes, as upper bucket bounds (s)."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return {}
    return {
        name: next(le for le, c in delta if c >= frac * total)
        for name, frac in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    } | {"samples": total}


def loop_thread_sched(pid: int) -> tuple[float, float]:
    """(CPU s, s runnable but waiting for a CPU) of a process's main thread: the API's loop."""
    fields = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(fields[0]) / 1e9, int(fields[1]) / 1e9


def lag_text(q: dict[str, float]) -> str:
    if not q:
        return "no samples"
    ms = {k: "inf" if v == float("inf") else f"<= {v * 1000:g} ms" for k, v in q.items()}
    return f"p50 {ms['p50']}, p99 {ms['p99']}, max {ms['max']} ({int(q['samples'])} samples)"


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


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclasses.dataclass(frozen=True)
class Api:
    """One API process under test: the working tree's, or ``--baseline``'s."""

    name: str  # "" for this tree, "baseline" for --baseline
    url: str
    metrics_url: str
    proc: psutil.Process


@contextlib.contextmanager
def baseline_code(ref: str, into: Path) -> Iterator[Path]:
    """``api/`` as it was at a git ref, extracted under ``into``: the PYTHONPATH entry that
    runs that API (with this tree's contract package, which it shares)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "api/rollcall_api"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    yield into / "api"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="(direct, plain, idempotent) rounds")
    parser.add_argument(
        "--setups",
        default="shared,own-cpu",
        help="CPU set-ups to run, in order: shared (as the kernel schedules), own-cpu (the API "
        "on one CPU with first claim on it)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="the API's (info, as deployed: an access line a request)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run api/ as it was at this git ref, as a second API process, in the same "
        "rounds (its phases beside this tree's, in alternating order): before/after side by side",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollcall-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with (
            control_plane(tmp / "cp", controller_manager=False, scheduler=False) as cp,
            redis_server(tmp / "redis") as redis,
            contextlib.ExitStack() as stack,
        ):
            api = install_crds(cp.kubeconfig)
            ns = "bench-submit"
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=ns))
            )
            key = write_key_file(tmp / "keys.yaml", {"bench": [ns]})["bench"]
            base_env = {
                # The bench measures the API's own cost: no per-school submission limit.
                "ROLLCALL_API_SUBMISSIONS_PER_MINUTE": "0",
                "ROLLCALL_API_KUBECONFIG": str(cp.kubeconfig),
                "ROLLCALL_API_KEYS_FILE": str(tmp / "keys.yaml"),
                "ROLLCALL_API_REDIS_URL": redis.url,
                "ROLLCALL_API_HOST": "127.0.0.1",
                "ROLLCALL_API_LOG_LEVEL": args.log_level,
                # ~1000 lag samples per 10 s phase: a p99 of 100 samples is their maximum.
                "ROLLCALL_API_LOOP_LAG_INTERVAL_SECONDS": "0.01",
            }
            code: dict[str, Path | None] = {"": None}
            if args.baseline:
                code["baseline"] = stack.enter_context(
                    baseline_code(args.baseline, tmp / "baseline")
                )
            apis = []
            for name, path in code.items():
                port, metrics_port = free_port(), free_port()
                env = base_env | {
                    "ROLLCALL_API_PORT": str(port),
                    "ROLLCALL_API_METRICS_PORT": str(metrics_port),
                }
                if path is not None:
                    env["PYTHONPATH"] = os.pathsep.join(
                        [str(path), os.environ.get("PYTHONPATH", "")]
                    )
                proc = stack.enter_context(api_process(env, port, tmp / f"api{name}.log"))
                url = f"http://127.0.0.1:{port}"
                apis.append(Api(name, url, f"http://127.0.0.1:{metrics_port}", proc))
                asyncio.run(load(url, key, 4, 2.0, False))  # warm up connections and caches
            print(
                f"rollcall API submit benchmark: {args.clients} closed-loop clients, "
                f"{args.seconds:g} s per phase, {args.rounds} rounds per CPU set-up, "
                f"{os.cpu_count()} CPUs, API log level {args.log_level}, "
                + (f"baseline api/ at {args.baseline}, " if args.baseline else "")
                + f"load average {os.getloadavg()[0]:.1f}"
            )
            control = [psutil.Process(p.pid) for p in cp.processes.values()]
            others = [p.pid for p in control] + [redis.process.pid, os.getpid()]
            for setup in cpu_setups(os.sched_getaffinity(0), args.setups.split(",")):
                applied = [apply_setup(setup, a.proc.pid, others) for a in apis]
                print(f" CPU set-up {setup.name}: {setup.how} ({', '.join(sorted(set(applied)))})")
                run_setup(setup.name, args, cp.kubeconfig, ns, key, apis)
            listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
                "rollcall.io", "v1alpha1", ns, "recognitionjobs", limit=1
            )
            stored = listed["metadata"].get("remainingItemCount", 0) + len(listed["items"])
            print(f"  RecognitionJobs stored: {stored}")
            api.close()


def round_phases(apis: list[Api], rounds: int) -> list[tuple[str, Api | None]]:
    """(phase, API) in order: each round a direct phase, then plain and idempotent for each API
    (the APIs' order alternating round by round, so neither always follows a direct phase),
    and one more direct phase at the end."""
    phases: list[tuple[str, Api | None]] = []
    for r in range(rounds):
        phases.append(("direct", None))
        for a in apis if r % 2 == 0 else apis[::-1]:
            phases += [(f"{a.name} plain".strip(), a), (f"{a.name} idempotent".strip(), a)]
    return [*phases, ("direct", None)]


def run_setup(
    setup: str,
    args: argparse.Namespace,
    kubeconfig: Path,
    ns: str,
    key: str,
    apis: list[Api],
) -> None:
    """One CPU set-up's interleaved phases, each printed, then the set-up's summary."""
    api_pids = {a.proc.pid for a in apis}
    control = [psutil.Process(p.pid) for p in psutil.Process().children() if p.pid not in api_pids]
    me = psutil.Process()
    phases = round_phases(apis, args.rounds)
    rates: list[tuple[str, float]] = []
    lags: dict[str, dict[str, list[dict[str, float]]]] = {
        a.name: {LAG: [], LAG_OWN: []} for a in apis
    }
    sched_sum: dict[str, list[float]] = {a.name: [0.0, 0.0] for a in apis}
    per_job: dict[str, list[float]] = {phase: [] for phase, a in phases if a is not None}
    for phase, target in phases:
        probe = target or apis[0]
        before, cpu0 = lag_histograms(probe.metrics_url), probe.proc.cpu_times()
        sched0 = loop_thread_sched(probe.proc.pid)
        cp0, me0 = cpu_seconds(control), cpu_seconds([me])
        t0 = time.perf_counter()
        if target is None:
            run = load_direct(kubeconfig, ns, args.clients, args.seconds)
        else:
            run = load(target.url, key, args.clients, args.seconds, phase.endswith("idempotent"))
        ok, lat, statuses = asyncio.run(run)
        wall = time.perf_counter() - t0
        cpu1, after = probe.proc.cpu_times(), lag_histograms(probe.metrics_url)
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        rates.append((phase, ok / wall))
        label = "apiserver direct" if target is None else f"via API {phase}"
        print(
            f"  {label:28s} {ok / wall:7.1f} creates/s  latency p50 "
            f"{pct(lat, 0.5) * 1000:.1f} ms p99 {pct(lat, 0.99) * 1000:.1f} ms  CPU: "
            f"API {cpu / wall * 100:.0f}%, control plane + Redis "
            f"{(cpu_seconds(control) - cp0) / wall * 100:.0f}%, load generator "
            f"{(cpu_seconds([me]) - me0) / wall * 100:.0f}%  {statuses}  "
            f"load {os.getloadavg()[0]:.1f}"
        )
        if target is not None:
            sched1 = loop_thread_sched(target.proc.pid)
            ran, waited = sched1[0] - sched0[0], sched1[1] - sched0[1]
            sched_sum[target.name][0] += ran
            sched_sum[target.name][1] += waited
            per_job[phase].append(ran / max(ok, 1))
            print(
                f"  {'':28s} API loop thread: CPU {ran:.2f} s "
                f"({per_job[phase][-1] * 1000:.2f} ms a submission), waited for a CPU "
                f"{waited:.2f} s in {wall:.1f} s"
            )
            for name in (LAG, LAG_OWN):
                q = lag_quantiles(before[name], after[name])
                lags[target.name][name].append(q)
                what = "loop lag" if name == LAG else "  own share"
                print(f"  {'':28s} API {what} {lag_text(q)}")
    for a in apis:
        tag = f"{setup}{' ' + a.name if a.name else ''}"
        plain, idem = f"{a.name} plain".strip(), f"{a.name} idempotent".strip()
        summarise(tag, rates, lags[a.name], plain, idem)
        ran, waited = sched_sum[a.name]
        api_phases = 2 * args.rounds
        print(
            f"  [{tag}] API loop thread over its {api_phases} phases: ran {ran:.2f} s, waited "
            f"{waited:.2f} s for a CPU ({waited / api_phases:.2f} s a phase); its CPU a "
            f"submission (the API's own cost, less noisy than a rate): plain "
            f"{', '.join(f'{c * 1000:.2f}' for c in per_job[plain])} ms, idempotent "
            f"{', '.join(f'{c * 1000:.2f}' for c in per_job[idem])} ms"
        )
    if len(apis) > 1:
        for kind in ("plain", "idempotent"):
            this, base = per_job[kind], per_job[f"baseline {kind}"]
            print(
                f"  [{setup}] loop CPU a submission, this tree / baseline, {kind}, per round: "
                + ", ".join(f"{t / b:.2f}" for t, b in zip(this, base, strict=True))
                + f" (median {median([t / b for t, b in zip(this, base, strict=True)]):.2f})"
            )


def summarise(
    setup: str,
    rates: list[tuple[str, float]],
    lags: dict[str, list[dict[str, float]]],
    plain_phase: str = "plain",
    idem_phase: str = "idempotent",
) -> None:
    """Per round: API rate / mean of the direct phases either side; then the medians and goals."""
    ratios: dict[str, list[float]] = {plain_phase: [], idem_phase: []}
    directs = [i for i, (phase, _) in enumerate(rates) if phase == "direct"]
    for a, b in itertools.pairwise(directs):
        base = (rates[a][1] + rates[b][1]) / 2
        for phase, rate in rates[a + 1 : b]:
            if phase in ratios:
                ratios[phase].append(rate / base)
    plain, idem = median(ratios[plain_phase]), median(ratios[idem_phase])
    p99 = max(q.get("p99", float("inf")) for q in lags[LAG])
    own = max(q.get("p99", float("inf")) for q in lags[LAG_OWN])
    shown = ", ".join(f"{r:.2f}" for r in ratios[plain_phase])
    shown_idem = ", ".join(f"{r:.2f}" for r in ratios[idem_phase])
    print(
        f"  [{setup}] ratio via API / direct per round: plain {shown}; idempotent {shown_idem}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(
        f"  [{setup}] goals (#12): plain >= 0.8 of direct: {verdict(plain >= 0.8)} (median {plain:.2f}); "
        f"idempotent >= 0.7: {verdict(idem >= 0.7)} (median {idem:.2f}); loop lag p99 <= 10 ms "
        f"(worst phase): {verdict(p99 <= 0.01)} (<= {p99 * 1000:g} ms; own share "
        f"<= {own * 1000:g} ms)"
    )


if __name__ == "__main__":
    main()
