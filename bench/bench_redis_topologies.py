"""What a Redis Cluster or Sentinel costs a job, side by side with one redis-server, in one run.

The same three job-side operations go through ``rollcall_contract.redisclient`` on each topology
(all started on loopback by hack/redistopo.py, no ACL): a class gallery load (meta + packed copy +
HLEN in one pipeline), a results publish (staging hash in chunks, then RENAME in one MULTI/EXEC),
and a progress write. Topologies take turns round by round, so load bursts on a shared machine hit
each alike. Prints the median per operation and its ratio to the single node.

Run: ``.venv/bin/python bench/bench_redis_topologies.py [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from redisrig import redis_server
from redistopo import redis_cluster, sentinel_group
from rollcall_contract import redisclient
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.progress import redis_sink
from rollcall_job.results import write_results

TENANT = "bench-school"
META = GalleryMeta("dlib-resnet-v1", 128, "euclidean")


def _documents(students: int) -> dict[str, Any]:
    return {
        "summary": {"present": students},
        "attendance": {f"s-{i:04d}": {"status": "present", "score": 0.3} for i in range(students)},
        "photos": [{"path": f"p{i}.jpg", "faces": 3} for i in range(students // 4)],
    }


def _ops(client: redis.Redis, students: int) -> dict[str, Callable[[int], object]]:
    rng = np.random.default_rng(0)
    store = GalleryStore(client, TENANT)
    store.put("6b", META, {f"s-{i:04d}": rng.normal(size=(3, 128)) for i in range(students)})
    docs = _documents(students)
    return {
        "gallery load": lambda i: store.load("6b", META),
        "results publish": lambda i: write_results(
            client, TENANT, f"uid-{i}", "pod", docs, ttl_seconds=60
        ),
        "progress write": lambda i: redis_sink(client, TENANT, f"uid-{i}", 60)(i, 100),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--students", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            redis_server(root / "single") as single,
            redis_cluster(root / "cluster") as cluster,
            sentinel_group(root / "sentinel") as group,
        ):
            urls = {"single": single.url, "cluster": cluster.url(), "sentinel": group.url()}
            clients = {name: redisclient.sync_client(url) for name, url in urls.items()}
            ops = {name: _ops(c, args.students) for name, c in clients.items()}
            times: dict[tuple[str, str], list[float]] = {}
            for i in range(args.rounds):
                order = list(ops)[i % 3 :] + list(ops)[: i % 3]
                for name in order:
                    for op, run in ops[name].items():
                        start = time.perf_counter()
                        run(i)
                        times.setdefault((name, op), []).append(time.perf_counter() - start)
            for c in clients.values():
                c.close()
    print(f"{args.rounds} rounds, {args.students} students; median ms (ratio to single node)")
    for op in ops["single"]:
        base = statistics.median(times[("single", op)])
        cells = [
            f"{name} {1000 * statistics.median(times[(name, op)]):.2f}"
            f" ({statistics.median(times[(name, op)]) / base:.2f}x)"
            for name in ops
        ]
        print(f"{op:16s} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
