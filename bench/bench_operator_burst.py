"""1000 RecognitionJobs in a burst against a real control plane: how fast do their Jobs exist?

Starts etcd + kube-apiserver on loopback (hack/localk8s.py), the operator as a subprocess, then
measures side by side in one run:

- baseline: the same number of Jobs created directly by this client (the apiserver's own pace);
- burst: RJs created as fast as the client can; the operator turns each into a Job.

Both sides create the same Jobs (``build_job``'s manifest, unsuspended, owner reference and all) on
the same control plane, which has no controller-manager and no scheduler. The figure compared is
"all Jobs exist", so only Job creation is compared: with a controller-manager the burst's Jobs
would also make 1000 pods, Job status updates and the scheduler's Unschedulable writes while the
operator creates Jobs, whereas a suspended baseline (as this bench once had) made none, and an
unsuspended one would leave its own pods' writes running into the burst. (With those controllers
the same 300-RJ burst cost 4.4x the suspended baseline; see README's Benchmarks.)

Prints the time until all Jobs exist (both sides: until a watch has seen the last one ADDED),
RJ->Job latency p50/p99 (from the RJ create's response to the Job's ADDED watch event), the
operator's CPU seconds and peak RSS, every apiserver write in each window by verb and resource,
and the ratio of the burst's wall time to the baseline's. Usage:
``python bench/bench_operator_burst.py [--count 1000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes import client, config, utils, watch

from localk8s import control_plane, wait_for
from procs import stop_process
from redisrig import free_port
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_operator.builder import build_job
from rollcall_operator.settings import OperatorSettings

# The kubernetes package's helpers are partly untyped; this script only needs them to run.
_config: Any = config
_utils: Any = utils
_watch: Any = watch

REPO = Path(__file__).resolve().parent.parent


def rj(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": f"burst-{i:05d}"},
        "spec": {
            "classCode": f"C{i % 40}",
            "images": {"claimName": "photos", "subPath": f"day/{i}"},
            "roster": [f"s{j}" for j in range(30)],
        },
    }


class JobWatch:
    """Records when each Job in a namespace is first seen (ADDED), from a background watch.

    Both sides are timed by this watch. It reads plain JSON: the client's model objects cost CPU
    under the GIL it shares with the 16 creating threads (bench_district saw its Job watch lag so),
    a lag that would count as the operator's.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.batch = client.BatchV1Api(api)
        self.ns = namespace
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            w = _watch.Watch()
            with contextlib.suppress(Exception):
                for ev in w.stream(self.batch.list_namespaced_job, self.ns, timeout_seconds=30,
                                   _request_timeout=60, deserialize=False):  # fmt: skip
                    name = ev["object"]["metadata"]["name"]
                    self.seen.setdefault(name, time.monotonic())
                    if self.stop.is_set():
                        w.stop()

    def wait(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.seen) >= count


def make_namespace(core: Any, name: str) -> None:
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: _sa_exists(core, name), f"namespace {name} ready")


def _sa_exists(core: Any, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


def create_all(fn: Any, items: list[Any], threads: int, rate: float = 0) -> dict[int, float]:
    """Create ``items`` with ``threads`` workers, at most ``rate`` per second (0: no limit)."""
    done: dict[int, float] = {}
    start = time.monotonic()

    def one(i: int) -> None:
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        fn(items[i])
        done[i] = time.monotonic()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(items))))
    return done


_WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def write_counts(api: Any) -> Counter[tuple[str, str, str]]:
    """apiserver_request_total of every write, by (verb, resource, subresource), from /metrics."""
    cfg = api.configuration
    headers = {"Authorization": cfg.get_api_key_with_prefix("BearerToken") or ""}
    resp = api.rest_client.pool_manager.request("GET", f"{cfg.host}/metrics", headers=headers)
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in resp.data.decode().splitlines():
        if (m := _SAMPLE.match(line)) is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("verb") in _WRITE_VERBS:
            key = (labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))
            counts[key] += int(float(m["value"]))
    return counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16, help="client threads creating objects")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--rate", type=float, default=0, help="RJs per second to create (0: a burst, no pacing)"
    )
    args = parser.parse_args()
    n = args.count

    with (
        tempfile.TemporaryDirectory(prefix="rollcall-bench-") as tmp,
        control_plane(Path(tmp) / "cp", controller_manager=False, scheduler=False) as cp,
    ):
        api = _config.new_client_from_config(config_file=str(cp.kubeconfig))
        api.configuration.connection_pool_maxsize = args.threads * 2
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        batch: Any = client.BatchV1Api(api)
        crd = yaml.safe_load((REPO / "charts/rollcall/crds/recognitionjobs.yaml").read_text())
        _utils.create_from_dict(api, crd)
        ext: Any = client.ApiextensionsV1Api(api)
        wait_for(lambda: any(c.type == "Established" and c.status == "True"
                             for c in ext.read_custom_resource_definition(
                                 crd["metadata"]["name"]).status.conditions or []),
                 "CRD established")  # fmt: skip
        for ns in ("baseline", "burst"):
            core.create_namespace({"metadata": {"name": ns}})  # no ServiceAccount: no pods here
        time.sleep(2)  # let the CRD's storage finish initialising

        # --- baseline: the client creates the Jobs itself --------------------------------------
        settings = OperatorSettings()
        jobs = []
        for i in range(n):
            body = rj(i)
            body["metadata"].update(namespace="baseline", uid=f"00000000-0000-4000-8000-{i:012d}")
            # the operator's very manifest; its owner reference dangles (no garbage collector)
            jobs.append(build_job(body, settings))
        apiserver = psutil.Process(cp.processes["kube-apiserver"].pid)
        base_watch = JobWatch(api, "baseline")
        time.sleep(1)
        base_writes0, base_cpu0 = write_counts(api), _cpu(apiserver)
        t0 = time.monotonic()
        # raw answers on both sides (no model objects): the client's decoding is not the pace
        create_all(lambda j: batch.create_namespaced_job("baseline", j, _preload_content=False),
                   jobs, args.threads)  # fmt: skip
        base_watch.wait(n, args.timeout)
        baseline = max(base_watch.seen.values()) - t0
        base_cpu = _cpu(apiserver) - base_cpu0
        base_watch.stop.set()
        time.sleep(1)
        base_writes = write_counts(api) - base_writes0

        # --- the operator -----------------------------------------------------------------------
        health = f"http://127.0.0.1:{free_port()}/healthz"
        env = {
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            "ROLLCALL_OPERATOR_NAMESPACES": json.dumps(["burst"]),
            "ROLLCALL_OPERATOR_METRICS_PORT": "0",
            "ROLLCALL_OPERATOR_LIVENESS_ENDPOINT": health,
            "ROLLCALL_OPERATOR_LOG_LEVEL": "WARNING",
        }
        log = Path(tmp) / "operator.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "rollcall_operator"], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(lambda: _healthy(health), "operator healthy", timeout=60)
            ps = psutil.Process(proc.pid)
            cpu0, wait0 = _cpu(ps), _runqueue_wait(proc.pid)
            others = {name: psutil.Process(p.pid) for name, p in cp.processes.items()}
            others["bench client"] = psutil.Process()
            others_cpu0 = {name: _cpu(p) for name, p in others.items()}
            watcher = JobWatch(api, "burst")
            time.sleep(1)
            writes0 = write_counts(api)
            bodies = [rj(i) for i in range(n)]
            t0 = time.monotonic()
            created = create_all(
                lambda b: custom.create_namespaced_custom_object(
                    GROUP, VERSION, "burst", PLURAL, b, _preload_content=False),
                bodies, args.threads, args.rate,
            )  # fmt: skip
            client_done = time.monotonic() - t0
            ok = watcher.wait(n, args.timeout)
            all_jobs = max(watcher.seen.values()) - t0 if watcher.seen else float("nan")
            cpu, waited = _cpu(ps) - cpu0, _runqueue_wait(proc.pid) - wait0
            others_cpu = {n: _cpu(p) - others_cpu0[n] for n, p in others.items()}
            peak_rss = _peak_rss_mib(proc.pid)
            watcher.stop.set()
            latencies = [watcher.seen[f"burst-{i:05d}"] - created[i]
                         for i in range(n) if f"burst-{i:05d}" in watcher.seen]  # fmt: skip
            jobs_now = len(batch.list_namespaced_job("burst").items)
            time.sleep(2)  # writes that trail the last Job (its RJ's status) land in the count
            writes = write_counts(api) - writes0
            rj_events = sum(
                1 for e in core.list_namespaced_event("burst").items
                if e.involved_object.kind == "RecognitionJob"
            )  # fmt: skip
        finally:
            stop_process(proc, 15)

    pace = f"paced at {args.rate:g}/s" if args.rate else "unpaced burst"
    print(f"RecognitionJobs in the burst:            {n} ({pace})")
    print(f"baseline: all {n} Jobs the client creates exist after: {baseline:.2f} s"
          f"  (kube-apiserver {base_cpu:.1f} CPU-s)")  # fmt: skip
    print_writes("baseline", base_writes, n)
    print(f"burst: client creates {n} RJs:               {client_done:.2f} s")
    print(f"burst: all {len(watcher.seen)} Jobs exist after:         {all_jobs:.2f} s"
          f"{'' if ok else '  TIMED OUT'}")  # fmt: skip
    print(f"Jobs in the namespace (no duplicates):  {jobs_now}")
    if latencies:
        print(
            f"RJ->Job latency p50 / p99 / max:        {statistics.median(latencies):.3f} / "
            f"{percentile(latencies, 0.99):.3f} / {max(latencies):.3f} s  (target p99 < 1 s)"
        )
        tenths = [latencies[k * len(latencies) // 10 : (k + 1) * len(latencies) // 10]
                  for k in range(10)]  # fmt: skip
        print("  p50 by tenth of the burst (creation order): "
              + " ".join(f"{statistics.median(t):.2f}" for t in tenths if t))  # fmt: skip
    print(
        f"operator CPU during the burst:          {cpu:.1f} s  ({cpu / max(all_jobs, 1e-9):.2f} cores)"
    )
    print(
        f"  operator CPU per RJ:                  {1000 * cpu / n:.2f} ms  (robust to machine load)"
    )
    print(f"  operator threads waited for a CPU:    {waited:.1f} s  (runnable, not running)")
    for name, seconds in others_cpu.items():
        print(f"  CPU of {name + ':':<30} {seconds:.1f} s")
    print(f"operator peak RSS:                      {peak_rss:.0f} MiB")
    print_writes("the burst", writes, n)
    ours = (
        writes[("POST", "jobs", "")]
        + sum(c for (v, r, _), c in writes.items() if r == "recognitionjobs" and v != "POST")
        + rj_events
    )
    print(f"rollcall operator writes per RJ (Job create + RJ patches + RJ Events): {ours / n:.2f}"
          "  (target <= 3)")  # fmt: skip
    print(f"ratio all-Jobs-via-operator / direct Job creation: {all_jobs / baseline:.2f}")
    print(f"RATIO all_jobs operator/direct = {all_jobs / baseline:.1f}x  (target <= 2x)")
    if latencies:
        print(f"RJ->Job p99 = {percentile(latencies, 0.99):.3f} s  (target < 1 s)")


def print_writes(window: str, writes: Counter[tuple[str, str, str]], n: int) -> None:
    print(f"apiserver writes during {window} (verb resource/subresource: count, per RJ):")
    for (verb, resource, sub), count in sorted(writes.items(), key=lambda kv: -kv[1]):
        name = f"{resource}/{sub}" if sub else resource
        print(f"  {verb:<6} {name:<32} {count:>7}  {count / n:6.2f}")


def _runqueue_wait(pid: int) -> float:
    """Seconds the process's threads have waited, runnable, for a CPU (/proc/<pid>/task/*/schedstat).

    Tells a starved process (on a loaded machine) from one that is slow by itself."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[1])
    return total / 1e9


def _cpu(process: psutil.Process) -> float:
    return float(sum(process.cpu_times()[:2]))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
