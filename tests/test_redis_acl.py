"""Redis ACL users against a real redis-server started with ``acl.acl_file`` of the shared rules.

Two schools, ``school-a`` and ``school-b``, each with its own job user; the operator and the API
with theirs. What one credential can reach is asked of the server itself, never simulated.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis

from redisrig import redis_server
from rollcall_api.erasure import Eraser
from rollcall_api.store import Store
from rollcall_contract import acl, keys
from rollcall_contract.jobenv import ExitCode, JobSettings
from rollcall_job.__main__ import main
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.results import read_results, write_results
from toyfaces import ToyEngine, photo, save

pytestmark = pytest.mark.redis

A, B = "school-a", "school-b"
CLASS = "grade7-b"  # the same class code in both schools
META = GalleryMeta("toy-v1", 3, "cosine")


@dataclass(frozen=True)
class AclRedis:
    port: int
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return f"redis://{user}:{quote(self.passwords[user], safe='')}@127.0.0.1:{self.port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user))


def _users() -> list[tuple[str, list[str]]]:
    return [
        (acl.ADMIN_USER, acl.admin_rules()),
        (acl.API_USER, acl.api_rules()),
        (acl.OPERATOR_USER, acl.operator_rules()),
        (acl.job_user(A), acl.job_user_rules(A)),
        (acl.job_user(B), acl.job_user_rules(B)),
    ]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    work = tmp_path_factory.mktemp("redis-acl")
    passwords = {user: secrets.token_urlsafe(24) + ":@/%" for user, _ in _users()}
    aclf = work / "users.acl"
    aclf.write_text(acl.acl_file([(u, r, passwords[u]) for u, r in _users()]))
    with redis_server(
        work, config=f"aclfile {aclf}\nenable-debug-command yes\nenable-module-command yes\n"
    ) as server:
        yield AclRedis(server.port, passwords)


@pytest.fixture
def admin(acl_redis: AclRedis) -> Iterator[redis.Redis]:
    client = acl_redis.client(acl.ADMIN_USER)
    client.flushall()
    yield client
    client.close()


def _seed(admin: redis.Redis, tenant: str, student: str) -> dict[str, str]:
    """One of everything a school owns; returns kind -> key."""
    GalleryStore(admin, tenant).put(CLASS, META, {student: [[1.0, 0.0, 0.0]]})
    write_results(admin, tenant, "uid-1", "x", {"summary": {"images": 1}}, ttl_seconds=600)
    admin.hset(keys.job_progress(tenant, "uid-1"), mapping={"done": 1, "total": 2})
    admin.set(keys.idempotency(tenant, "k1"), "{}")
    admin.hset(keys.erased(tenant, CLASS), "gone", "1-x")
    return {
        "gallery": keys.gallery(tenant, CLASS, META.model_id),
        "gallery_meta": keys.gallery_meta(tenant, CLASS, META.model_id),
        "gallery_packed": keys.gallery_packed(tenant, CLASS, META.model_id),
        "results": keys.job_results(tenant, "uid-1"),
        "progress": keys.job_progress(tenant, "uid-1"),
        "idempotency": keys.idempotency(tenant, "k1"),
        "erased": keys.erased(tenant, CLASS),
    }


def _dump(admin: redis.Redis, tenant: str) -> dict[bytes, Any]:
    found = sorted(admin.scan_iter(match=keys.tenant_pattern(tenant)))
    return {k: admin.dump(k) for k in found}


# Each is (label, command) run against one of school B's keys with school A's job credentials.
CROSS_TENANT: list[tuple[str, Callable[[redis.Redis, str], Any]]] = [
    ("hlen", lambda c, k: c.hlen(k)),
    ("get", lambda c, k: c.get(k)),
    ("hgetall", lambda c, k: c.hgetall(k)),
    ("hset", lambda c, k: c.hset(k, "s-evil", b"\x00" * 12)),
    ("set", lambda c, k: c.set(k, "x")),
    ("del", lambda c, k: c.delete(k)),
    ("expire", lambda c, k: c.expire(k, 1)),
    ("rename away", lambda c, k: c.rename(k, keys.gallery(A, "stolen", "toy-v1"))),
    ("rename onto", lambda c, k: c.rename(keys.job_progress(A, "uid-1"), k)),
    ("watch", lambda c, k: c.execute_command("WATCH", k)),  # type: ignore[no-untyped-call]
]


@pytest.mark.parametrize(("label", "command"), CROSS_TENANT, ids=[c[0] for c in CROSS_TENANT])
def test_a_school_job_cannot_touch_another_schools_keys(
    acl_redis: AclRedis,
    admin: redis.Redis,
    label: str,
    command: Callable[[redis.Redis, str], Any],
) -> None:
    theirs = _seed(admin, B, "cy")
    _seed(admin, A, "ann")
    before = _dump(admin, B)
    job_a = acl_redis.client(acl.job_user(A))
    for kind, key in theirs.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            command(job_a, key)
        # the same command on school A's own key of that kind passes the ACL (the key is refused,
        # not the verb); a wrong-type reply is fine
        if label not in ("rename away", "rename onto"):
            own = key.replace(keys.tenant_prefix(B), keys.tenant_prefix(A))
            try:
                command(job_a, own)
            except redis.exceptions.NoPermissionError:
                raise
            except redis.ResponseError as e:
                assert "WRONGTYPE" in str(e)
        assert _dump(admin, B) == before, kind
    job_a.close()


DENIED_COMMANDS: list[tuple[str, ...]] = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "evil", "on", "nopass", "~*", "+@all"),
    ("DEBUG", "SLEEP", "0"),
    ("SCRIPT", "FLUSH"),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),
    ("MODULE", "LIST"),
    ("SHUTDOWN", "NOSAVE"),
    ("MONITOR",),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("SWAPDB", "0", "1"),
    ("BGSAVE",),
    ("REPLICAOF", "NO", "ONE"),
    ("PUBLISH", "c", "m"),
]


@pytest.mark.parametrize("user", [acl.job_user(A), acl.OPERATOR_USER, acl.API_USER])
def test_no_component_can_administer_the_server(
    acl_redis: AclRedis, admin: redis.Redis, user: str
) -> None:
    _seed(admin, A, "ann")
    client = acl_redis.client(user)
    for command in DENIED_COMMANDS:
        if user == acl.API_USER and command[0] == "SCAN":
            continue  # the API lists a class's galleries of every model to erase them
        # NOPERM, or (the API may EVAL) the script's own call refused under the same ACL
        with pytest.raises(redis.ResponseError, match=r"no permissions|can't run this command"):
            client.execute_command(*command)  # type: ignore[no-untyped-call]
    client.close()
    assert admin.dbsize() > 0 and admin.ping()


def test_the_operator_reads_progress_and_writes_nothing(
    acl_redis: AclRedis, admin: redis.Redis
) -> None:
    seeded = {t: _seed(admin, t, s) for t, s in ((A, "ann"), (B, "cy"))}
    op = acl_redis.client(acl.OPERATOR_USER)
    pipe = op.pipeline(transaction=False)  # what runtime.py's progress loop sends
    for tenant in (A, B):
        pipe.hmget(keys.job_progress(tenant, "uid-1"), "done", "total")
    assert pipe.execute() == [[b"1", b"2"], [b"1", b"2"]]
    before = {t: _dump(admin, t) for t in (A, B)}
    for kind, key in seeded[A].items():
        for write in (
            lambda k: op.hset(k, "x", "1"),
            lambda k: op.delete(k),
            lambda k: op.set(k, "x"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write(key)
        if kind != "progress":
            with pytest.raises(redis.exceptions.NoPermissionError):
                op.hmget(key, "x")
    assert {t: _dump(admin, t) for t in (A, B)} == before
    op.close()


def test_the_api_store_works_under_its_own_user(acl_redis: AclRedis, admin: redis.Redis) -> None:
    seeded = _seed(admin, B, "cy")

    async def scenario() -> tuple[Any, ...]:
        client = aioredis.Redis.from_url(acl_redis.url(acl.API_USER))
        store = Store(client)
        try:
            await store.ping()
            claim = await store.claim(A, "retry-1", "rj-1", "fp", 60)
            again = await store.claim(A, "retry-1", "rj-2", "fp", 60)
            held = await store.holds(A, "retry-1", claim)
            await store.release(A, "retry-1", claim)  # EVAL: the script runs under this ACL too
            released = await client.exists(keys.idempotency(A, "retry-1"))
            progress = await store.progress(B, "uid-1")
            results = await store.results(B, "uid-1")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.hset(seeded["progress"], "done", 9)
            # erasure of a class: every model's gallery hash found by pattern, then removed
            found = [k async for k in client.scan_iter(match=keys.gallery_match(B, CLASS))]
            # erasure of a student: the tombstone (HGETALL, HSET, HDEL, EXPIRE), template, results
            erased = await Eraser(client).erase_student(B, CLASS, "cy")
            tombs = await client.hkeys(keys.erased(B, CLASS))
            return claim.won, again.won, held, released, progress, results, found, erased, tombs
        finally:
            await client.aclose()

    won, again, held, released, progress, results, found, erased, tombs = asyncio.run(scenario())
    assert (won, again, held, released) == (True, False, True, 0)
    assert progress == (1, 2)
    assert results == {"summary": {"images": 1}}
    assert found == [seeded["gallery"].encode()]  # not the class's tombstones
    assert (erased.templates, tombs) == (1, [b"cy"])  # the stale tombstone pruned: HDEL


# --- the real job entry point, once per school, with that school's credentials ---------------


@pytest.fixture
def job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acl_redis: AclRedis
) -> Callable[..., tuple[int, dict[str, Any]]]:
    """Run ``python -m rollcall_job`` in-process as the operator would start it for ``tenant``."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(
        tenant: str,
        mode: str,
        photos: Path,
        uid: str,
        user: str | None = None,
        override: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        term = tmp_path / f"term-{uid}"
        env = {
            "ROLLCALL_JOB_NAMESPACE": tenant,
            "ROLLCALL_JOB_NAME": f"rj-{uid}",
            "ROLLCALL_JOB_UID": uid,
            "ROLLCALL_MODE": mode,
            "ROLLCALL_CLASS_CODE": CLASS,
            "ROLLCALL_GALLERY": CLASS,
            "ROLLCALL_INPUT_DIR": str(photos),
            "ROLLCALL_REDIS_URL": acl_redis.url(user or acl.job_user(tenant)),
            "ROLLCALL_TERMINATION_LOG": str(term),
            "ROLLCALL_PROGRESS_INTERVAL_SECONDS": "0",
        }
        for k, v in {**env, **(override or {})}.items():
            monkeypatch.setenv(k, v)

        def toy(settings: JobSettings, min_face_px: int) -> ToyEngine:
            return ToyEngine(min_face_px=min_face_px)

        try:
            rc = main([], engine_loader=toy)
        finally:
            root.handlers[:], root.level = handlers, level
        return rc, json.loads(term.read_text())

    return run


def _ids(entries: list[Any]) -> list[str]:
    """Student ids of an attendance list (entries are ids or {"student": id, ...})."""
    return [e["student"] if isinstance(e, dict) else e for e in entries]


def _class(tmp: Path, name: str, students: list[str]) -> tuple[Path, Path]:
    for sid in students:
        save(tmp / name / "enroll" / sid / "1.png", photo([(sid, 10, 10, 60)]))
    return tmp / name / "enroll", tmp / name / "class"


def test_two_schools_with_the_same_class_code_never_touch_each_other(
    job: Callable[..., tuple[int, dict[str, Any]]], admin: redis.Redis, tmp_path: Path
) -> None:
    enroll_a, class_a = _class(tmp_path, "a", ["ann", "bob"])
    enroll_b, class_b = _class(tmp_path, "b", ["cy", "dee"])
    # each school's class photo shows one of its own students and one of the other school's
    save(class_a / "1.png", photo([("ann", 10, 10, 40), ("cy", 100, 10, 40)]))
    save(class_b / "1.png", photo([("cy", 10, 10, 40), ("ann", 100, 10, 40)]))

    assert job(A, "enroll", enroll_a, "a-enrol")[0] == ExitCode.OK
    assert job(B, "enroll", enroll_b, "b-enrol")[0] == ExitCode.OK
    rc_a, term_a = job(A, "identify", class_a, "a-id")
    rc_b, term_b = job(B, "identify", class_b, "b-id")

    assert (rc_a, rc_b) == (ExitCode.OK, ExitCode.OK)
    assert GalleryStore(admin, A).load(CLASS, META).student_ids == ("ann", "bob")
    assert GalleryStore(admin, B).load(CLASS, META).student_ids == ("cy", "dee")
    att_a = (read_results(admin, A, "a-id") or {})["attendance"]
    att_b = (read_results(admin, B, "b-id") or {})["attendance"]
    assert (_ids(att_a["present"]), _ids(att_a["absent"])) == (["ann"], ["bob"])
    assert (_ids(att_b["present"]), _ids(att_b["absent"])) == (["cy"], ["dee"])
    assert term_a["summary"]["unknown"] == term_b["summary"]["unknown"] == 1
    assert term_a["resultKey"] == keys.job_results(A, "a-id")
    assert admin.exists(keys.job_progress(B, "b-id"))


def test_a_job_told_another_schools_namespace_is_refused_by_redis(
    job: Callable[..., tuple[int, dict[str, Any]]], admin: redis.Redis, tmp_path: Path
) -> None:
    """Defence in depth: even a job misconfigured to name school B keeps school A's credential."""
    enroll_b, _ = _class(tmp_path, "b", ["cy"])
    assert job(B, "enroll", enroll_b, "b-enrol")[0] == ExitCode.OK
    before = _dump(admin, B)
    enroll_a, class_a = _class(tmp_path, "a", ["ann"])
    save(class_a / "1.png", photo([("cy", 10, 10, 40)]))

    for mode, photos in (("enroll", enroll_a), ("identify", class_a)):
        rc, term = job(B, mode, photos, f"evil-{mode}", user=acl.job_user(A))
        assert rc == ExitCode.BAD_INPUT, term
        assert "permission" in term["error"].lower()
    assert _dump(admin, B) == before


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ROLLCALL_JOB_NAMESPACE", "School-B"), ("ROLLCALL_GALLERY", "x}:y")],
)
def test_names_that_keys_refuse_fail_the_job_as_bad_input(
    job: Callable[..., tuple[int, dict[str, Any]]], tmp_path: Path, variable: str, value: str
) -> None:
    enroll_a, _ = _class(tmp_path, "a", ["ann"])
    rc, term = job(A, "enroll", enroll_a, "bad-name", override={variable: value})
    assert rc == ExitCode.BAD_INPUT
    assert "invalid" in term["error"]
