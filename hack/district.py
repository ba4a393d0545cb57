"""A district's school day on the rig: synthetic recognition pods on several process kubelets.

``bench/bench_district.py`` drives the day; this module holds what it needs besides the bench:

- the day's arithmetic (pure, tested in tests/test_district.py): which RJ comes in which period,
  how long each pod runs, per-school queue-wait figures, evenness and GPU busy share;
- ``SyntheticRecognition``, a node-agent ``Runner`` that plays a recognition container in a
  second or three: it writes progress and a results set through the job's real writers
  (``rollcall_job.progress``, ``rollcall_job.results``) to the Redis it is given, so the Redis
  topology is on the path, and hands back the container's summary as the termination message;
- ``main``: a process running several ``NodeAgent`` s (one per Node) with that runner, so the node
  agents' CPU time is measured apart from the bench client's. Each pod's start and end go to a
  JSON-lines file for the bench.

Run by the bench as ``python hack/district.py --kubeconfig K --nodes 4 --gpus 2 --redis-url U
--record F``; it prints ``ready`` once every Node is schedulable and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import statistics
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from kubernetes import client, config

from nodeagent import NodeAgent, Outcome
from rollcall_contract import redisclient
from rollcall_job.progress import Progress, redis_sink
from rollcall_job.results import write_results
from rollcall_job.termination import summary_message

_RECORD_LOCK = threading.Lock()  # one pod's line at a time, whichever node's runner writes it

# --- the day's arithmetic (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One identify RJ of the day: a class of a school in one period."""

    school: str  # the school's namespace
    name: str  # the RJ's name
    class_code: str
    period: int


def school_name(i: int) -> str:
    return f"school-{i:03d}"


def plan_day(schools: int, classes: int, periods: int, seed: int = 0) -> list[list[Planned]]:
    """RJs per period (a burst each); within a burst the schools are interleaved in a seeded
    order, so no school is always submitted first."""
    day: list[list[Planned]] = []
    for p in range(periods):
        burst = [
            Planned(school_name(s), f"c{c}-p{p + 1}", f"grade{c + 1}", p)
            for s in range(schools)
            for c in range(classes)
        ]
        burst.sort(key=lambda rj: _unit(f"{seed}/{rj.school}/{rj.name}"))
        day.append(burst)
    return day


def _unit(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (same on every run and in every process)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pod_seconds(key: str, low: float, high: float) -> float:
    """How long the synthetic pod of ``key`` runs: spread evenly over [low, high), stable per key."""
    return low + (high - low) * _unit(key)


def period_gap(jobs_per_period: int, mean_seconds: float, gpus: int, slack: float) -> float:
    """Seconds between bursts: ``slack`` times the time ``gpus`` take to drain one burst when busy
    all the time. Above 1 the GPUs can catch up between periods; at 1 only if nothing else slows."""
    return slack * jobs_per_period * mean_seconds / gpus


@dataclass(frozen=True)
class Wait:
    """Queue-wait figures (seconds) of one school, or of all together."""

    school: str
    count: int
    p50: float
    p99: float
    mean: float


def wait_figures(school: str, waits: Sequence[float]) -> Wait:
    """p50, p99 (nearest rank on the sorted waits) and mean; needs at least one wait."""
    ordered = sorted(waits)
    rank = max(0, math.ceil(0.99 * len(ordered)) - 1)
    return Wait(
        school, len(ordered), statistics.median(ordered), ordered[rank], statistics.fmean(ordered)
    )


def per_school(waits: Mapping[str, Sequence[float]]) -> list[Wait]:
    """Each school's figures, the best served (lowest mean wait) first."""
    return sorted(
        (wait_figures(school, w) for school, w in waits.items() if w), key=lambda f: f.mean
    )


def evenness(schools: Sequence[Wait]) -> float:
    """max/min of the per-school mean waits: 1 is perfectly even; inf if one school never waited."""
    means = [s.mean for s in schools]
    low = min(means)
    return max(means) / low if low > 0 else math.inf


def busy_share(run_seconds: Iterable[float], gpus: int, makespan: float) -> float:
    """Share of the GPU pool's time spent running pods: sum of pod run time / (GPUs x makespan)."""
    return sum(run_seconds) / (gpus * makespan) if makespan > 0 else math.nan


@dataclass(frozen=True)
class PodRun:
    """One pod's run as the node agent saw it (unix seconds)."""

    namespace: str
    job: str
    uid: str  # the RJ's uid (the job's ROLLCALL_JOB_UID)
    node: str
    start: float
    end: float
    exit_code: int


def read_runs(path: Path) -> list[PodRun]:
    if not path.exists():
        return []
    return [PodRun(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def first_starts(runs: Iterable[PodRun]) -> dict[str, float]:
    """RJ uid -> when its first pod started (a retried RJ waited only until its first attempt)."""
    starts: dict[str, float] = {}
    for run in runs:
        starts[run.uid] = min(run.start, starts.get(run.uid, math.inf))
    return starts


def peak_overlap(runs: Iterable[PodRun]) -> dict[str, int]:
    """Node -> the most pods it ran at the same moment (a pod ending as another starts is not
    counted twice): never above the node's GPUs if the scheduler kept to their capacity."""
    events: dict[str, list[tuple[float, int]]] = {}
    for run in runs:
        events.setdefault(run.node, []).extend([(run.start, 1), (run.end, -1)])
    peaks: dict[str, int] = {}
    for node, evs in events.items():
        now = peak = 0
        for _, step in sorted(evs):  # at equal times -1 sorts first
            now += step
            peak = max(peak, now)
        peaks[node] = peak
    return peaks


@dataclass(frozen=True)
class Life:
    """One RJ's life as the bench saw it (unix seconds): created, its first pod's start, the end
    of its last pod."""

    school: str
    created: float
    start: float
    end: float


def idle_while_waiting(lives: Iterable[Life], gpus: int, school_cap: int) -> float:
    """GPU-seconds the pool sat idle while an RJ that the caps would have let in was waiting.

    Between consecutive events the state is constant: per school, RJs running and RJs waiting
    (created, not started). A school may start ``min(waiting, cap - running)`` more; the pool
    could start ``min(free GPUs, that sum)``; integrated over time. Zero for a pool that hands
    a freed GPU to the next admissible RJ at once; what the control plane's hand-off costs
    otherwise (the queueing that caps and a full pool impose is not counted)."""
    events: list[tuple[float, int, str, str]] = []  # time, order, school, what
    for life in lives:
        # The create's reply can reach the bench after the pod already started (another process's
        # clock, a slow client thread): order each RJ's own events as they must have happened.
        start = max(life.start, life.created)
        events += [(life.created, 0, life.school, "created"), (start, 1, life.school, "start")]
        events.append((max(life.end, start), 2, life.school, "end"))
    events.sort()
    running: dict[str, int] = {}
    waiting: dict[str, int] = {}
    lost, last = 0.0, events[0][0] if events else 0.0
    for at, _, school, what in events:
        free = max(0, gpus - sum(running.values()))
        admissible = sum(min(w, max(0, school_cap - running.get(s, 0))) for s, w in waiting.items())
        lost += min(free, admissible) * (at - last)
        last = at
        if what == "created":
            waiting[school] = waiting.get(school, 0) + 1
        elif what == "start":
            waiting[school] -= 1
            running[school] = running.get(school, 0) + 1
        else:
            running[school] -= 1
    return lost


def segments(
    created: Mapping[str, float], stages: Sequence[tuple[str, Mapping[str, float]]]
) -> dict[str, list[float]]:
    """Where each RJ's queue wait went: for consecutive stages (name, RJ uid -> when reached),
    starting at ``created``, the seconds from the previous stage to this one, per RJ that
    reached both. A clock step between processes could make one negative; it is kept as seen."""
    out: dict[str, list[float]] = {}
    previous: Mapping[str, float] = created
    for name, reached in stages:
        out[name] = [reached[uid] - previous[uid] for uid in reached if uid in previous]
        previous = reached
    return out


# --- the synthetic recognition container ------------------------------------------------------------


class SyntheticRecognition:
    """A node-agent runner that stands in for the recognition container.

    It sleeps the pod's planned seconds over ``photos`` steps, advancing the job's real
    ``Progress`` (Redis sink, the job's own rate limit), then publishes a results set (attendance
    for the roster, per-photo entries, a summary) with the job's real ``write_results`` — on a
    cluster or Sentinel URL that includes waiting for a replica — and returns the summary as the
    termination message, as the container does. No photo is read and no model runs.
    """

    def __init__(
        self,
        store: redis.Redis,
        record: Path,
        node: str,
        *,
        photos: int = 4,
        low: float = 1.0,
        high: float = 3.0,
        replicas: int = 0,
    ) -> None:
        self.store, self.record, self.node = store, record, node
        self.photos, self.low, self.high, self.replicas = photos, low, high, replicas

    def __call__(self, pod: client.V1Pod, cancelled: threading.Event) -> Outcome:
        assert pod.spec is not None and pod.metadata is not None  # as the apiserver hands it out
        start = time.time()
        env = {e.name: e.value for e in pod.spec.containers[0].env or [] if e.value is not None}
        ns, job, uid = (
            env["ROLLCALL_JOB_NAMESPACE"],
            env["ROLLCALL_JOB_NAME"],
            env["ROLLCALL_JOB_UID"],
        )
        ttl = int(env.get("ROLLCALL_RESULT_TTL_SECONDS", "3600"))
        roster: list[str] = json.loads(env.get("ROLLCALL_ROSTER", "[]"))
        interval = float(env.get("ROLLCALL_PROGRESS_INTERVAL_SECONDS", "1.0"))
        step = pod_seconds(f"{ns}/{job}", self.low, self.high) / self.photos
        progress = Progress(self.photos, [redis_sink(self.store, ns, uid, ttl)], interval=interval)
        progress.start()
        code = 0
        for _ in range(self.photos):
            if cancelled.wait(step):
                code = 137
                break
            progress.advance()
        message = "killed"
        if code == 0:
            progress.finish()
            present = roster[: len(roster) * 9 // 10]
            summary = {
                "images": self.photos,
                "faces": len(present),
                "matched": len(present),
                "present": len(present),
                "absent": len(roster) - len(present),
                "uncertain": 0,
            }
            documents = {
                "summary": summary,
                "attendance": {
                    s: {"status": "present" if s in present else "absent"} for s in roster
                },
                "photos": [{"path": f"photo-{i}.jpg", "faces": 8} for i in range(self.photos)],
            }
            key = write_results(
                self.store, ns, uid, str(pod.metadata.uid), documents,
                ttl_seconds=ttl, replicas=self.replicas,
            )  # fmt: skip
            message = summary_message(summary, result_key=key)
        run = PodRun(ns, job, uid, self.node, start, time.time(), code)
        with _RECORD_LOCK, self.record.open("a") as out:
            out.write(json.dumps(run.__dict__) + "\n")
        return Outcome(code, message)


# --- the node agents' process ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Node agents running synthetic recognition pods.")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--gpus", type=int, default=2, help="GPUs per node")
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--record", type=Path, required=True)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    args = ap.parse_args(argv)

    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = 8 * args.nodes * args.gpus
    api = client.ApiClient(cfg)
    store = redisclient.sync_client(args.redis_url)
    replicas = redisclient.parse(args.redis_url).replicas
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agents = [
        NodeAgent(
            api,
            f"district-node-{i}",
            SyntheticRecognition(
                store,
                args.record,
                f"district-node-{i}",
                low=args.min_seconds,
                high=args.max_seconds,
                replicas=replicas,
            ),
            gpus=args.gpus,
        )
        for i in range(args.nodes)
    ]
    try:
        for agent in agents:
            agent.start()
        print("ready", flush=True)
        stop.wait()
    finally:
        for agent in agents:
            agent.stop()
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
