"""``rediss://`` with a CA file, against Debian's redis-server 7.0 serving TLS with ACL users."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from localk8s import _make_pki
from redisrig import free_port, redis_server
from rollcall_api.settings import Settings as ApiSettings
from rollcall_contract import acl, keys, redistls
from rollcall_contract.jobenv import ExitCode, JobSettings
from rollcall_job.__main__ import main
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_operator.builder import build_job
from rollcall_operator.settings import OperatorSettings
from toyfaces import ToyEngine, photo, save

SCHOOL = "school-a"


@pytest.mark.parametrize(
    ("url", "ca", "expected"),
    [
        ("rediss://u:p@redis:6380/0", "/ca.crt", "/ca.crt"),
        ("rediss://u:p@redis:6380/0", None, None),
        ("rediss://u:p@redis:6380/0", "", None),
        ("redis://u:p@redis:6379/0", None, None),
        ("redis://u:p@redis:6379/0", "/ca.crt", ValueError),
        ("unix:///run/redis.sock", "/ca.crt", ValueError),
    ],
)
def test_client_options(url: str, ca: str | None, expected: Any) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError, match="rediss"):
            redistls.client_options(url, ca)
        return
    options = redistls.client_options(url, ca)
    assert options.get("ssl_ca_certs") == expected
    if expected:
        assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True


def test_every_component_reads_a_ca_file_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLCALL_REDIS_CA_FILE", "/etc/ca/job.crt")
    monkeypatch.setenv("ROLLCALL_OPERATOR_REDIS_CA_FILE", "/etc/ca/op.crt")
    monkeypatch.setenv("ROLLCALL_API_REDIS_CA_FILE", "/etc/ca/api.crt")
    for var, value in (("ROLLCALL_JOB_NAMESPACE", SCHOOL), ("ROLLCALL_JOB_NAME", "j")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("ROLLCALL_JOB_UID", "u")
    monkeypatch.setenv("ROLLCALL_CLASS_CODE", "7b")
    monkeypatch.setenv("ROLLCALL_GALLERY", "7b")
    assert JobSettings().redis_ca_file == Path("/etc/ca/job.crt")
    assert OperatorSettings().redis_ca_file == Path("/etc/ca/op.crt")
    assert ApiSettings().redis_ca_file == Path("/etc/ca/api.crt")


def test_the_operator_mounts_the_ca_into_job_pods_when_configured() -> None:
    rj = {
        "apiVersion": "rollcall.io/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": {"name": "r", "namespace": SCHOOL, "uid": "u-1"},
        "spec": {"classCode": "7B", "images": {"claimName": "photos"}, "roster": ["s1"]},
    }
    plain = build_job(rj, OperatorSettings())["spec"]["template"]["spec"]
    assert not [v for v in plain["volumes"] if v["name"] == "redis-ca"]
    assert "ROLLCALL_REDIS_CA_FILE" not in {e["name"] for e in plain["containers"][0]["env"]}

    pod = build_job(rj, OperatorSettings(job_redis_ca_configmap="redis-ca"))["spec"]["template"]
    spec = pod["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "redis-ca"]
    assert volume["configMap"] == {
        "name": "redis-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    container = spec["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "redis-ca"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ROLLCALL_REDIS_CA_FILE"] == f"{mount['mountPath']}/ca.crt"


# --- a real TLS redis-server --------------------------------------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    tls_port: int
    ca: Path
    other_ca: Path
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return f"rediss://{user}:{self.passwords[user]}@localhost:{self.tls_port}/0"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    work = tmp_path_factory.mktemp("redis-tls")
    _make_pki(work / "pki")  # CA + a serving cert for localhost / 127.0.0.1
    _make_pki(work / "other")  # an unrelated CA
    users = [(acl.job_user(SCHOOL), acl.job_user_rules(SCHOOL)), (acl.API_USER, acl.api_rules())]
    passwords = {u: secrets.token_hex(16) for u, _ in users}
    (work / "users.acl").write_text(acl.acl_file([(u, r, passwords[u]) for u, r in users]))
    port = free_port()
    config = "\n".join(
        [
            f"tls-port {port}",
            f"tls-cert-file {work / 'pki' / 'apiserver.crt'}",
            f"tls-key-file {work / 'pki' / 'apiserver.key'}",
            f"tls-ca-cert-file {work / 'pki' / 'ca.crt'}",
            "tls-auth-clients no",
            f"aclfile {work / 'users.acl'}",
        ]
    )
    with redis_server(work, config=config + "\n"):
        yield TlsRedis(port, work / "pki" / "ca.crt", work / "other" / "ca.crt", passwords)


@pytest.fixture
def job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_redis: TlsRedis) -> Iterator[Path]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    enroll_dir = tmp_path / "enroll"
    save(enroll_dir / "ann" / "1.png", photo([("ann", 10, 10, 60)]))
    env = {
        "ROLLCALL_JOB_NAMESPACE": SCHOOL,
        "ROLLCALL_JOB_NAME": "rj-tls",
        "ROLLCALL_JOB_UID": f"uid-{secrets.token_hex(4)}",
        "ROLLCALL_MODE": "enroll",
        "ROLLCALL_CLASS_CODE": "7B",
        "ROLLCALL_GALLERY": "7b",
        "ROLLCALL_INPUT_DIR": str(enroll_dir),
        "ROLLCALL_REDIS_URL": tls_redis.url(acl.job_user(SCHOOL)),
        "ROLLCALL_REDIS_CA_FILE": str(tls_redis.ca),
        "ROLLCALL_TERMINATION_LOG": str(tmp_path / "term"),
        "ROLLCALL_PROGRESS_INTERVAL_SECONDS": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield tmp_path / "term"
    root.handlers[:], root.level = handlers, level


def _toy(settings: JobSettings, min_face_px: int) -> ToyEngine:
    return ToyEngine(min_face_px=min_face_px)


@pytest.mark.redis
def test_the_job_enrolls_over_tls_verified_by_the_ca(job_env: Path, tls_redis: TlsRedis) -> None:
    assert main([], engine_loader=_toy) == ExitCode.OK, job_env.read_text()
    client = redis.Redis.from_url(
        tls_redis.url(acl.job_user(SCHOOL)), **redistls.client_options("rediss://", tls_redis.ca)
    )
    meta = GalleryMeta("toy-v1", 3, "cosine")
    assert GalleryStore(client, SCHOOL).load("7b", meta).student_ids == ("ann",)
    client.close()


@pytest.mark.redis
def test_a_server_another_ca_signed_is_refused(
    job_env: Path, tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = tls_redis.url(acl.job_user(SCHOOL))
    probe = redis.Redis.from_url(url, **redistls.client_options(url, tls_redis.other_ca))
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
        probe.ping()
    monkeypatch.setenv("ROLLCALL_REDIS_CA_FILE", str(tls_redis.other_ca))
    assert main([], engine_loader=_toy) == ExitCode.TRANSIENT
    assert json.loads(job_env.read_text())["reason"] == "Transient"


@pytest.mark.redis
def test_a_ca_file_with_a_plain_url_is_refused(
    job_env: Path, tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLCALL_REDIS_URL", "redis://localhost:1/0")
    assert main([], engine_loader=_toy) == ExitCode.BAD_INPUT
    assert "rediss" in json.loads(job_env.read_text())["error"]


@pytest.mark.redis
def test_the_api_client_options_reach_the_tls_server(tls_redis: TlsRedis) -> None:
    url = tls_redis.url(acl.API_USER)

    async def ping() -> Any:
        client = aioredis.Redis.from_url(url, **redistls.client_options(url, tls_redis.ca))
        try:
            return await client.set(keys.idempotency(SCHOOL, "k"), "v", ex=5)
        finally:
            await client.aclose()

    assert asyncio.run(ping()) is True
