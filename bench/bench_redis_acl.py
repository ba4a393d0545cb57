"""What per-school Redis ACL users cost: a class gallery load and a results write, as the school's
job user (key pattern + command checks) vs an unrestricted user, side by side on one redis-server.

Rounds alternate between the two users (this machine is shared and noisy); each round's time and
the best of each are printed, then ``RATIO acl/unrestricted`` of the bests (1.0 = free).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from redisrig import redis_server
from rollcall_contract import acl
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.results import write_results

TENANT = "bench-school"
META = GalleryMeta("dlib-resnet-v1", 128, "euclidean")


def one_round(client: redis.Redis, roster: list[str], documents: dict[str, object]) -> float:
    start = time.perf_counter()
    GalleryStore(client, TENANT).load("6B", META, roster)
    write_results(client, TENANT, "uid-bench", "1", documents, ttl_seconds=60)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--students", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    users = [
        (acl.ADMIN_USER, acl.admin_rules()),
        (acl.job_user(TENANT), acl.job_user_rules(TENANT)),
    ]
    passwords = {u: secrets.token_hex(16) for u, _ in users}
    with tempfile.TemporaryDirectory() as tmp:
        aclf = Path(tmp) / "users.acl"
        aclf.write_text(acl.acl_file([(u, r, passwords[u]) for u, r in users]))
        with redis_server(Path(tmp) / "redis", config=f"aclfile {aclf}\n") as server:
            clients = {
                u: redis.Redis(host="127.0.0.1", port=server.port, username=u, password=p)
                for u, p in passwords.items()
            }
            rng = np.random.default_rng(0)
            roster = [f"s-{i:05d}" for i in range(args.students)]
            rows = {s: rng.normal(size=(5, 128)).astype(np.float32) for s in roster}
            GalleryStore(clients[acl.ADMIN_USER], TENANT).put("6B", META, rows)
            documents: dict[str, object] = {
                "summary": {"images": 40},
                "photos": [{"file": f"{i}.jpg", "faces": []} for i in range(40)],
            }
            times: dict[str, list[float]] = {u: [] for u in clients}
            for _ in range(args.rounds):
                for user, client in clients.items():
                    times[user].append(one_round(client, roster, documents))
            for client in clients.values():
                client.close()
    print(f"gallery: {args.students} students x 5 x 128 floats; load (roster) + results write")
    for user, t in times.items():
        print(f"  {user:28s}: best {min(t) * 1e3:7.2f} ms, median {np.median(t) * 1e3:7.2f} ms")
    ratio = min(times[acl.job_user(TENANT)]) / min(times[acl.ADMIN_USER])
    print(f"RATIO acl/unrestricted = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
