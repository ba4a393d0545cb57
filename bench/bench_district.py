"""A district's compressed school day on the real rig: queue waits, fairness, GPU use, bottleneck.

Starts etcd + kube-apiserver + controller-manager + scheduler (hack/localk8s.py), Redis (one
redis-server, or a 3-primary Redis Cluster with a replica each from hack/redistopo.py), node
agents in their own process (hack/district.py: 4 Nodes x 2 GPUs, each pod a synthetic
recognition run of 1-3 s writing progress and results through the job's real writers), and the
real operator with a GPU cap equal to the pool and a per-school GPU cap. Then the day: 50 schools
(namespaces) x 6 classes x 4 periods of identify RJs, each period one burst, bursts spaced so the
pool could just drain each one (``--slack``).

Prints queue wait (RJ create -> its first pod starts) p50/p99 per school (worst 5, best 5) and
overall, evenness (max/min of per-school mean wait), GPU busy share (sum of pod run time /
(GPUs x makespan)), apiserver writes per RJ (apiserver_request_total, bench_operator_burst's
reader), CPU seconds per component (psutil, from /proc) and the busiest one. ``--both`` runs the
day on each topology, one after the other in one run, and prints RATIO lines cluster/single.

Run: ``.venv/bin/python bench/bench_district.py [--redis single|cluster] [--both] [--scale 0.2]``.
On 2 shared cores at load ~20 the full day took 20 min per topology; ``--scale 0.2`` (10 schools,
240 RJs) about 3.5 min. The pods are short on purpose (1-3 s, where a real class takes minutes), so
the control plane's hand-off from one pod to the next weighs as much as it ever can.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client, config, watch

from bench_operator_burst import _healthy, _sa_exists, create_all, write_counts
from district import (
    Life,
    Planned,
    Wait,
    busy_share,
    evenness,
    first_starts,
    idle_while_waiting,
    peak_overlap,
    per_school,
    period_gap,
    plan_day,
    read_runs,
    segments,
    wait_figures,
)
from localk8s import ControlPlane, control_plane, install_crds, local_volume, wait_for
from procs import stop_process
from redisrig import free_port, redis_server
from redistopo import redis_cluster
from rollcall_contract import keys, redisclient
from rollcall_contract.labels import RJ_UID
from rollcall_contract.model import GROUP, PLURAL, VERSION
from stack import school_namespace

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "charts" / "rollcall" / "crds"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def rj_body(rj: Planned, roster: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": rj.name, "namespace": rj.school},
        "spec": {
            "classCode": rj.class_code,
            "images": {"claimName": "photos", "subPath": f"day/{rj.name}"},
            "roster": [f"s-{j:02d}" for j in range(roster)],
            "output": {"ttlSeconds": 3600},
        },
    }


class FirstSeen:
    """From a cluster-wide watch, when each object first reached each stage (unix seconds).

    ``stages`` names the stages an object is in now and ``key`` the RJ uid it belongs to; a watch
    that breaks (timeout, apiserver hiccup) is opened again. Stage -> RJ uid -> time.
    """

    def __init__(
        self,
        list_fn: Callable[..., Any],
        list_args: tuple[Any, ...],
        key: Callable[[Any], str | None],
        stages: Callable[[Any], list[str]],
        **list_kwargs: Any,
    ) -> None:
        self.list_fn, self.list_args, self.list_kwargs = list_fn, list_args, list_kwargs
        self.key, self.stages = key, stages
        self.seen: dict[str, dict[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Plain JSON (no model objects: the client's deserialisation cost more CPU than the
        # operator under a 1,200-RJ day and made this watch lag), resumed from the last
        # resourceVersion so a 30 s timeout does not list everything again; any error relists.
        version: str | None = None
        while not self.stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            resume = {"resource_version": version} if version else {}
            try:
                for ev in w.stream(  # type: ignore[no-untyped-call]
                    self.list_fn, *self.list_args, **self.list_kwargs, **resume,
                    timeout_seconds=30, _request_timeout=60, deserialize=False,
                ):  # fmt: skip
                    obj, now = ev["object"], time.time()
                    version = obj["metadata"]["resourceVersion"]
                    if (uid := self.key(obj)) is not None:
                        for stage in self.stages(obj):
                            self.seen.setdefault(stage, {}).setdefault(uid, now)
                    if self.stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
            except Exception:  # 410 Gone, a dropped connection: list and watch afresh
                version = None

    def count(self, prefix: str) -> int:
        return sum(len(v) for k, v in self.seen.items() if k.startswith(prefix))

    def wait(self, prefix: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(prefix) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.count(prefix) >= count


def _rj_uid(obj: Any) -> str | None:
    return str(obj["metadata"]["uid"])


def _rj_stages(obj: Any) -> list[str]:
    phase = (obj.get("status") or {}).get("phase")
    return [f"ended:{phase}"] if phase in TERMINAL else []


def _label_uid(obj: Any) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(RJ_UID)


def _job_stages(job: Any) -> list[str]:
    conditions = (job.get("status") or {}).get("conditions") or []
    done = any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)
    return ["job", "job complete"] if done else ["job"]


def _pod_stages(pod: Any) -> list[str]:
    return ["pod", "bound"] if pod["spec"].get("nodeName") else ["pod"]


@dataclass
class DayResult:
    topology: str
    rjs: int
    ended: Counter[str]
    overall: Wait
    schools: list[Wait]
    stages: dict[str, Wait]  # where the waits went
    evenness: float
    busy: float
    makespan: float
    ideal: float  # sum of pod run time / GPUs: the makespan if the pool never idled
    mean_run: float  # seconds a pod ran, on average
    idle_waiting: float  # GPU-seconds idle while an RJ the caps allowed was waiting
    endings: dict[str, Wait]  # pod end -> Job Complete -> RJ Succeeded
    pods: int
    node_peaks: dict[str, int]  # the most pods a node ran at once
    gpus_per_node: int
    gpus: int
    results_found: int
    events: Counter[str]  # Events in the school namespaces, by the component that posted them
    writes: Counter[tuple[str, str, str]]
    cpu: dict[str, float]
    wall: float  # the whole run's seconds including start-up
    uptime: str
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def redis_topology(kind: str, workdir: Path) -> Iterator[tuple[str, dict[str, psutil.Process]]]:
    """(URL, name -> process) of a single redis-server or a 3-primary cluster with replicas."""
    if kind == "single":
        with redis_server(workdir / "redis") as server:
            yield server.url, {"redis": psutil.Process(server.process.pid)}
    else:
        with redis_cluster(workdir / "cluster") as cluster:
            procs = {
                f"redis node {i}": psutil.Process(n.process.pid)
                for i, n in enumerate(cluster.nodes)
            }
            yield cluster.url(), procs


def _cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` and its children (the node agents' and kopf's)."""
    with contextlib.suppress(psutil.Error):
        times = proc.cpu_times()
        return times.user + times.system + times.children_user + times.children_system
    return 0.0


SNAPSHOT = {  # what the operator and node-agent processes run, copied once per bench run
    "operator": "rollcall_operator",
    "contract": "rollcall_contract",
    "job_image": "rollcall_job",
    "hack": "",
}


def snapshot(dest: Path) -> Path:
    """Copy the operator, contract, job and rig code as they are now into ``dest``.

    Both topologies' days then run the same code even while the working tree changes under a
    long run (the tree is shared), so their RATIO lines compare Redis and nothing else."""
    for top, package in SNAPSHOT.items():
        shutil.copytree(
            REPO / top / package, dest / top / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "controlplane", "kueue"),
        )  # fmt: skip
    return dest


def _spawn(
    name: str, argv: list[str], env: dict[str, str], workdir: Path, src: Path
) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(str(src / top) for top in SNAPSHOT)
    env = {**env, "PYTHONPATH": path}
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=subprocess.PIPE if name == "nodes" else log,
            stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def prepare_schools(api: client.ApiClient, cp: ControlPlane, schools: list[str], url: str) -> None:
    """Each school a restricted namespace with its Redis Secret and a bound photo claim."""
    core: Any = client.CoreV1Api(api)

    def one(ns: str) -> None:
        school_namespace(api, ns, url)
        local_volume(core, ns, "photos", cp.workdir.parent / "claims" / ns, read_only=True)
        wait_for(lambda: _sa_exists(core, ns), f"{ns} default ServiceAccount")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, schools))


def run_day(kind: str, args: argparse.Namespace, src: Path) -> DayResult:
    began = time.monotonic()
    schools = max(1, round(50 * args.scale))
    day = plan_day(schools, args.classes, args.periods, seed=args.seed)
    names = sorted({rj.school for burst in day for rj in burst})
    gpus = args.nodes * args.gpus_per_node
    mean = (args.min_seconds + args.max_seconds) / 2
    gap = period_gap(len(day[0]), mean, gpus, args.slack)
    total = sum(len(b) for b in day)
    print(f"[{kind}] {schools} schools x {args.classes} classes x {args.periods} periods = "
          f"{total} RJs on {gpus} GPUs (operator caps: {args.operator_gpus or gpus} GPUs, "
          f"{args.school_cap} per school); a burst every {gap:.1f} s", flush=True)  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="rollcall-district-") as tmp,
        control_plane(Path(tmp) / "cp") as cp,
        redis_topology(kind, Path(tmp)) as (url, redis_procs),
    ):
        work = Path(tmp)
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        cfg.connection_pool_maxsize = args.threads * 2
        api = client.ApiClient(cfg)
        install_crds(api, CRD_DIR)
        prepare_schools(api, cp, names, url)
        record = work / "pods.jsonl"
        nodes = _spawn(
            "nodes",
            [sys.executable, str(src / "hack" / "district.py"), "--kubeconfig", str(cp.kubeconfig),
             "--nodes", str(args.nodes), "--gpus", str(args.gpus_per_node), "--redis-url", url,
             "--record", str(record), "--min-seconds", str(args.min_seconds),
             "--max-seconds", str(args.max_seconds)],
            {}, work, src,
        )  # fmt: skip
        health = f"http://127.0.0.1:{free_port()}/healthz"
        operator = _spawn(
            "operator",
            [sys.executable, "-m", "rollcall_operator"],
            {
                "ROLLCALL_OPERATOR_KUBECONFIG": str(cp.kubeconfig),
                "ROLLCALL_OPERATOR_REDIS_URL": url,
                "ROLLCALL_OPERATOR_IMAGE": "rollcall-job:local",
                "ROLLCALL_OPERATOR_COMMAND": '["rollcall-job"]',
                "ROLLCALL_OPERATOR_MAX_GPUS": str(args.operator_gpus or gpus),
                "ROLLCALL_OPERATOR_MAX_GPUS_PER_NAMESPACE": str(args.school_cap),
                "ROLLCALL_OPERATOR_LIVENESS_ENDPOINT": health,
                "ROLLCALL_OPERATOR_METRICS_PORT": "0",
                "ROLLCALL_OPERATOR_LOG_LEVEL": "WARNING",
            },
            work,
            src,
        )
        try:
            assert nodes.stdout is not None
            if nodes.stdout.readline().strip() != b"ready":
                raise RuntimeError((work / "nodes.log").read_text()[-3000:])
            wait_for(lambda: _healthy(health), "operator healthy", timeout=90)
            procs = {name: psutil.Process(p.pid) for name, p in cp.processes.items()}
            procs |= {
                "operator": psutil.Process(operator.pid),
                "node agents": psutil.Process(nodes.pid),
            }
            procs |= redis_procs
            procs["bench client"] = psutil.Process()
            cpu0 = {name: _cpu(p) for name, p in procs.items()}
            watcher = FirstSeen(
                client.CustomObjectsApi(api).list_cluster_custom_object,
                (GROUP, VERSION, PLURAL), _rj_uid, _rj_stages,
            )  # fmt: skip
            job_watch = FirstSeen(
                client.BatchV1Api(api).list_job_for_all_namespaces, (), _label_uid,
                _job_stages, label_selector=RJ_UID,
            )  # fmt: skip
            pod_watch = FirstSeen(
                client.CoreV1Api(api).list_pod_for_all_namespaces, (), _label_uid, _pod_stages,
                label_selector=RJ_UID,
            )  # fmt: skip
            time.sleep(1)
            writes0 = write_counts(api)
            custom: Any = client.CustomObjectsApi(api)
            created: dict[str, tuple[str, float]] = {}  # uid -> (school, when the create answered)

            def create(rj: Planned) -> None:
                body = custom.create_namespaced_custom_object(
                    GROUP, VERSION, rj.school, PLURAL, rj_body(rj, args.roster)
                )
                created[body["metadata"]["uid"]] = (rj.school, time.time())

            t0 = time.time()
            for p, burst in enumerate(day):
                time.sleep(max(0.0, t0 + p * gap - time.time()))
                create_all(create, burst, args.threads)
            done = watcher.wait("ended:", total, args.timeout)
            ended = {
                uid: (at, stage.split(":", 1)[1])
                for stage, seen in watcher.seen.items() for uid, at in seen.items()
            }  # fmt: skip
            end = max((t for t, _ in ended.values()), default=time.time())
            time.sleep(2)  # writes that trail the last RJ's end land in the count
            writes = write_counts(api) - writes0
            cpu = {name: _cpu(p) - cpu0[name] for name, p in procs.items()}
            for w in (watcher, job_watch, pod_watch):
                w.stop.set()
            runs = read_runs(record)
            store = redisclient.sync_client(url)
            pipe = store.pipeline(transaction=False)
            for uid, (school, _) in created.items():
                pipe.exists(keys.job_results(school, uid))
            found = sum(int(x) for x in pipe.execute())
            events = Counter(
                e.reporting_component or (e.source.component if e.source else "") or "?"
                for e in client.CoreV1Api(api).list_event_for_all_namespaces().items
                if e.involved_object.namespace in names
            )
            store.close()
        finally:
            stop_process(operator, 15)
            stop_process(nodes, 15)
        api.close()  # type: ignore[no-untyped-call]
        uptime = Path("/proc/loadavg").read_text().split()[:3]

    starts = first_starts(runs)
    by_school: dict[str, list[float]] = {}
    for uid, (school, at) in created.items():
        if uid in starts:
            by_school.setdefault(school, []).append(starts[uid] - at)
    all_waits = [w for ws in by_school.values() for w in ws]
    figures = per_school(by_school)
    makespan = end - t0
    run_seconds = [r.end - r.start for r in runs]
    stages = segments(
        {uid: at for uid, (_, at) in created.items()},
        [
            ("operator admits (RJ -> Job)", job_watch.seen.get("job", {})),
            ("job controller (Job -> pod)", pod_watch.seen.get("pod", {})),
            ("scheduler (pod -> bound)", pod_watch.seen.get("bound", {})),
            ("node agent (bound -> runs)", starts),
        ],
    )
    last_ends: dict[str, float] = {}
    for run in runs:
        last_ends[run.uid] = max(run.end, last_ends.get(run.uid, 0.0))
    endings = segments(
        last_ends,
        [
            ("job controller (pod ends -> Job Complete)", job_watch.seen.get("job complete", {})),
            ("operator (Job Complete -> RJ ended)", {u: t for u, (t, _) in ended.items()}),
        ],
    )
    lives = [
        Life(school, at, starts[uid], last_ends[uid])
        for uid, (school, at) in created.items()
        if uid in starts
    ]
    notes = [] if done else [f"TIMED OUT: {len(ended)} of {total} RJs ended"]
    if any(peak > args.gpus_per_node for peak in peak_overlap(runs).values()):
        notes.append("a node ran more pods at once than it has GPUs")
    if len(all_waits) < total:
        notes.append(f"{total - len(all_waits)} RJs never started a pod")
    return DayResult(
        topology=kind,
        rjs=total,
        ended=Counter(phase for _, phase in ended.values()),
        stages={name: wait_figures(name, v) for name, v in stages.items() if v},
        overall=wait_figures("overall", all_waits or [float("nan")]),
        schools=figures,
        evenness=evenness(figures) if figures else float("nan"),
        busy=busy_share(run_seconds, gpus, makespan),
        makespan=makespan,
        ideal=sum(run_seconds) / gpus,
        mean_run=statistics.fmean(run_seconds) if run_seconds else float("nan"),
        idle_waiting=idle_while_waiting(lives, gpus, args.school_cap),
        endings={name: wait_figures(name, v) for name, v in endings.items() if v},
        pods=len(runs),
        node_peaks=peak_overlap(runs),
        gpus_per_node=args.gpus_per_node,
        gpus=gpus,
        results_found=found,
        events=events,
        writes=writes,
        cpu=cpu,
        wall=time.monotonic() - began,
        uptime=" ".join(uptime),
        notes=notes,
    )


def report(r: DayResult) -> None:
    print(f"\n=== {r.topology} Redis: {r.rjs} RJs, ended {dict(r.ended)}, {r.pods} pods, "
          f"results sets in Redis {r.results_found}/{r.rjs} ===")  # fmt: skip
    for note in r.notes:
        print(f"  ! {note}")
    print(f"  run took {r.wall:.0f} s in all; load average at the end {r.uptime}")
    print("  queue wait (RJ created -> first pod starts), seconds:")
    print(f"    {'school':<12} {'RJs':>4} {'p50':>7} {'p99':>7} {'mean':>7}")
    shown = r.schools[-5:][::-1] + r.schools[:5] if len(r.schools) > 10 else r.schools[::-1]
    for i, s in enumerate(shown):
        tag = "worst" if i < min(5, len(shown)) and len(r.schools) > 10 else ""
        tag = tag or ("best" if len(r.schools) > 10 else "")
        print(f"    {s.school:<12} {s.count:>4} {s.p50:7.2f} {s.p99:7.2f} {s.mean:7.2f}  {tag}")
    o = r.overall
    print(f"    {'overall':<12} {o.count:>4} {o.p50:7.2f} {o.p99:7.2f} {o.mean:7.2f}")
    print("  where the wait went (p50 / p99 / mean seconds per RJ):")
    for name, f in r.stages.items():
        print(f"    {name:<30} {f.p50:7.2f} {f.p99:7.2f} {f.mean:7.2f}")
    print("  and how a pod's end reached its RJ (p50 / p99 / mean seconds):")
    for name, f in r.endings.items():
        print(f"    {name:<42} {f.p50:6.2f} {f.p99:6.2f} {f.mean:6.2f}")
    print(f"  evenness, max/min of per-school mean wait: {r.evenness:.2f}")
    print(f"  makespan {r.makespan:.1f} s; pool-never-idle makespan {r.ideal:.1f} s; "
          f"GPU busy share {100 * r.busy:.1f} %; mean pod run {r.mean_run:.2f} s")  # fmt: skip
    lost = r.idle_waiting / (r.makespan * r.gpus)
    print(f"  GPU time idle while an RJ the caps allowed was waiting: {r.idle_waiting:.0f} GPU-s "
          f"({100 * lost:.1f} % of the pool's time; {r.idle_waiting / max(r.pods, 1):.2f} s per pod)")  # fmt: skip
    over = {n: p for n, p in r.node_peaks.items() if p > r.gpus_per_node}
    print(f"  most pods running at once per node: {sorted(r.node_peaks.values())} "
          f"(GPUs per node {r.gpus_per_node}; over-committed: {over or 'none'})")  # fmt: skip
    total = sum(r.writes.values())
    print(f"  apiserver writes: {total} ({total / r.rjs:.2f} per RJ); the largest:")
    for (verb, resource, sub), count in r.writes.most_common(8):
        name = f"{resource}/{sub}" if sub else resource
        print(f"    {verb:<6} {name:<28} {count:>7}  {count / r.rjs:6.2f} per RJ")
    by_source = ", ".join(f"{k} {v / r.rjs:.2f}" for k, v in r.events.most_common())
    print(f"    Events per RJ, by who posted them: {by_source}")
    cores = sum(r.cpu.values()) / r.makespan
    print(f"  CPU seconds during the day (all together {sum(r.cpu.values()):.0f} s, "
          f"{cores:.2f} cores on average):")  # fmt: skip
    for name, sec in sorted(r.cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<24} {sec:7.1f} s  {sec / r.makespan:5.2f} cores")
    busiest, sec = max(r.cpu.items(), key=lambda kv: kv[1])
    print(
        f"  busiest component: {busiest} ({sec:.0f} CPU s, {100 * sec / sum(r.cpu.values()):.0f} %)"
    )


def ratios(single: DayResult, cluster: DayResult) -> None:
    def redis_cpu(r: DayResult) -> float:
        return sum(v for k, v in r.cpu.items() if k.startswith("redis"))

    pairs = {
        "makespan": (cluster.makespan, single.makespan),
        "queue-wait p50": (cluster.overall.p50, single.overall.p50),
        "queue-wait p99": (cluster.overall.p99, single.overall.p99),
        "evenness": (cluster.evenness, single.evenness),
        "GPU busy share": (cluster.busy, single.busy),
        "mean pod run time": (cluster.mean_run, single.mean_run),
        "GPU idle while work waited": (cluster.idle_waiting, single.idle_waiting),
        "Redis CPU s": (redis_cpu(cluster), redis_cpu(single)),
        "node agents CPU s": (cluster.cpu["node agents"], single.cpu["node agents"]),
        "operator CPU s": (cluster.cpu["operator"], single.cpu["operator"]),
        "apiserver writes": (sum(cluster.writes.values()), sum(single.writes.values())),
    }
    print()
    for name, (c, s) in pairs.items():
        print(
            f"RATIO {name} cluster/single = {c / s if s else float('nan'):.2f}x  ({c:.4g} / {s:.4g})"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", choices=("single", "cluster"), default="single")
    ap.add_argument("--both", action="store_true", help="single, then cluster; prints RATIO lines")
    ap.add_argument("--scale", type=float, default=1.0, help="share of the 50 schools (0.2: 10)")
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--periods", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--gpus-per-node", type=int, default=2)
    ap.add_argument(
        "--operator-gpus",
        type=int,
        default=0,
        help="the operator's cluster-wide GPU cap; 0: the pool's GPUs. Above the pool, the"
        " scheduler holds the extra pods Pending and binds one as soon as a GPU frees",
    )
    ap.add_argument("--school-cap", type=int, default=2, help="GPUs one school may hold at once")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    ap.add_argument("--slack", type=float, default=1.2, help="burst spacing / pool drain time")
    ap.add_argument("--roster", type=int, default=30)
    ap.add_argument("--threads", type=int, default=8, help="client threads creating RJs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait after the last burst"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    kinds = ["single", "cluster"] if args.both else [args.redis]
    results: dict[str, DayResult] = {}
    with tempfile.TemporaryDirectory(prefix="rollcall-district-src-") as src:
        code = snapshot(Path(src))
        for kind in kinds:  # each report as soon as its day ends: a later failure keeps it
            results[kind] = run_day(kind, args, code)
            report(results[kind])
            sys.stdout.flush()
    if args.both:
        ratios(results["single"], results["cluster"])
    if args.json:
        args.json.write_text(json.dumps({k: _jsonable(r) for k, r in results.items()}, indent=1))
    return 0 if all(not r.notes for r in results.values()) else 1


def _jsonable(r: DayResult) -> dict[str, Any]:
    return {
        "rjs": r.rjs, "ended": dict(r.ended), "overall": r.overall.__dict__,
        "evenness": r.evenness, "busy": r.busy, "makespan": r.makespan, "ideal": r.ideal,
        "writes_per_rj": sum(r.writes.values()) / r.rjs, "cpu": r.cpu, "wall": r.wall,
        "median_school_mean_wait": statistics.median(s.mean for s in r.schools) if r.schools else None,
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
