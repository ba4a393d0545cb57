"""After recognition, a failed Redis write runs again inside the job instead of costing the pod.

Real redis-server, the job's own ``run`` with the toy engine. The server is demoted to a replica
(``REPLICAOF`` a port nobody listens on: the data stays, writes answer READONLY, as a master does
when a failover has just demoted it) at the job's last step before its publish. The job's retry
notice (``rollcall_job.writeretry``'s log record) promotes it again, so the second run of the
phase meets a master whatever the machine's speed. With ``redis_retry_seconds: 0`` the same job
raises ReadOnlyError (TRANSIENT: before this module, every such job) and publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redisrig import RedisServer, free_port, redis_server
from rollcall_contract import keys, redisclient
from rollcall_contract.jobenv import JobSettings
from rollcall_job.__main__ import run
from rollcall_job.results import read_results
from rollcall_job.writeretry import retryable
from toyfaces import ToyEngine, photo, save

pytestmark = pytest.mark.redis

TENANT, CLASS = "school-a", "6b"


@pytest.mark.parametrize(
    ("error", "again"),
    [
        (redis.exceptions.ConnectionError("lost"), True),
        (redis.exceptions.TimeoutError("slow"), True),
        (redis.exceptions.ReadOnlyError("READONLY"), True),
        (redis.exceptions.BusyLoadingError("loading"), True),
        (redisclient.NotReplicated("0 of 1"), True),
        (redis.exceptions.AuthenticationError("wrong password"), False),
        (redis.exceptions.NoPermissionError("NOPERM"), False),
        (redis.exceptions.ResponseError("WRONGTYPE"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_run_a_write_phase_again(error: Exception, again: bool) -> None:
    assert retryable(error) is again


class _Demotion(logging.Handler):
    """Demotes the server on ``demote()``; promotes it again at the job's first retry notice."""

    def __init__(self, admin: redis.Redis) -> None:
        super().__init__()
        self.admin = admin
        self.notices: list[dict[str, Any]] = []

    def demote(self) -> None:
        self.admin.replicaof("127.0.0.1", free_port())

    def promote(self) -> None:
        self.admin.replicaof("NO", "ONE")

    def emit(self, record: logging.LogRecord) -> None:
        self.notices.append({k: getattr(record, k, None) for k in ("phase", "error", "attempt")})
        if len(self.notices) == 1:
            self.promote()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as srv:
        yield srv


@pytest.fixture
def demotion(server: RedisServer) -> Iterator[_Demotion]:
    admin = redis.Redis.from_url(server.url)
    handler = _Demotion(admin)
    notices = logging.getLogger("rollcall_job.writeretry")
    level = notices.level
    notices.setLevel(logging.WARNING)
    notices.addHandler(handler)
    try:
        yield handler
    finally:
        notices.removeHandler(handler)
        notices.setLevel(level)
        handler.promote()
        admin.close()


def _settings(tmp_path: Path, url: str, mode: str, uid: str, retry: float) -> JobSettings:
    return JobSettings(
        job_namespace=TENANT,
        job_name=f"rj-{uid}",
        job_uid=uid,
        mode=mode,
        class_code=CLASS,
        gallery=CLASS,
        roster=["ann", "bob", "cy"],
        input_dir=tmp_path / mode,
        redis_url=url,
        progress_interval_seconds=0,
        termination_log=tmp_path / "termination-log",
        redis_retry_seconds=retry,
    )


def _toy(settings: JobSettings, min_face_px: int) -> ToyEngine:
    return ToyEngine(min_face_px=min_face_px)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    for sid in ("ann", "bob", "cy"):
        save(tmp_path / "enroll" / sid / "1.png", photo([(sid, 10, 10, 60)]))
    save(tmp_path / "identify" / "1.png", photo([("ann", 10, 10, 40), ("bob", 100, 10, 40)]))
    return tmp_path


def _staging_left(client: redis.Redis, uid: str) -> list[bytes]:
    one = keys.job_results_staging(TENANT, uid, "a")
    return list(client.scan_iter(match=one.removesuffix("a") + "*"))


@pytest.mark.parametrize("mode", ["identify", "enroll"])
def test_a_demoted_master_at_publish_costs_a_pause_not_the_attempt(
    photos: Path, server: RedisServer, demotion: _Demotion, mode: str
) -> None:
    """Demoted just before the publish: the phase runs again once the retry notice promoted the
    server, and the job finishes in this one process with whole results and no staging left."""
    client = redis.Redis.from_url(server.url)
    if mode == "identify":
        run(_settings(photos, server.url, "enroll", "uid-enrol", 60), engine_loader=_toy)
    uid = f"uid-{mode}"
    summary, key = run(
        _settings(photos, server.url, mode, uid, 60),
        engine_loader=_toy,
        before_publish=demotion.demote,
    )
    assert demotion.notices == [{"phase": "enrol" if mode == "enroll" else "publish",
                                 "error": "ReadOnlyError", "attempt": 1}]  # fmt: skip
    assert key == keys.job_results(TENANT, uid)
    results = read_results(client, TENANT, uid)
    assert results is not None
    if mode == "identify":
        assert summary["present"] == 2 and results["attendance"]["absent"] == ["cy"]
    else:
        assert summary["enrolled"] == 3 and set(results["students"]) == {"ann", "bob", "cy"}
    assert _staging_left(client, uid) == []
    client.close()


@pytest.mark.parametrize("mode", ["identify", "enroll"])
def test_without_retries_the_same_demotion_fails_the_attempt(
    photos: Path, server: RedisServer, demotion: _Demotion, mode: str
) -> None:
    """The control: ``redis_retry_seconds: 0`` raises the READONLY error (the job exits
    TRANSIENT) and publishes nothing, which the test above would show without the retries."""
    client = redis.Redis.from_url(server.url)
    if mode == "identify":
        run(_settings(photos, server.url, "enroll", "uid-enrol", 0), engine_loader=_toy)
    uid = f"uid-{mode}-once"
    with pytest.raises(redis.exceptions.ReadOnlyError) as info:
        run(
            _settings(photos, server.url, mode, uid, 0),
            engine_loader=_toy,
            before_publish=demotion.demote,
        )
    assert isinstance(info.value, redisclient.TRANSIENT_ERRORS)
    assert demotion.notices == []
    demotion.promote()
    assert read_results(client, TENANT, uid) is None
    client.close()
