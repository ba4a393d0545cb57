"""The chart's bundled Redis: its rendered redis.conf and ACL file, run by a real redis-server.

The ACL file must be exactly ``acl.acl_file`` of the shared rules with the passwords inside the
rendered URL Secrets, and each Secret's URL must reach exactly its own user's keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from helmchart import env_of, find, one, render
from redisrig import redis_server
from rollcall_contract import acl, keys, redistls
from rollcall_operator.settings import OperatorSettings

pytestmark = pytest.mark.redis

NS = "rollcall"
FULL = "rc-rollcall"
SCHOOLS = ["school-a", "school-b"]


@pytest.fixture(scope="module")
def docs(tools_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tools_bin, tmp_path_factory.mktemp("render"), {"namespaces": SCHOOLS})


def _urls(docs: list[dict[str, Any]]) -> dict[str, str]:
    """ACL user -> the URL a rendered Secret hands it."""
    out = {}
    for school in SCHOOLS:
        out[acl.job_user(school)] = one(docs, "Secret", f"{FULL}-redis-url", school)["stringData"][
            "url"
        ]
    for component, user in (("api", acl.API_USER), ("operator", acl.OPERATOR_USER)):
        out[user] = one(docs, "Secret", f"{FULL}-redis-{component}", NS)["stringData"]["url"]
    return out


def test_the_rules_file_in_the_chart_is_the_one_acl_py_writes(tmp_path: Path) -> None:
    acl.main([str(tmp_path)])
    chart = Path(__file__).resolve().parent.parent / acl.CHART_FILE
    assert chart.read_text() == (tmp_path / acl.CHART_FILE).read_text(), (
        "charts/rollcall/files/redis-acl-rules.json is stale: run python -m rollcall_contract.acl"
    )


def test_rendered_acl_file_is_acl_py_with_each_users_own_password(
    docs: list[dict[str, Any]],
) -> None:
    secret = one(docs, "Secret", f"{FULL}-redis", NS)["stringData"]
    urls = _urls(docs)
    passwords = {user: urlsplit(url).password or "" for user, url in urls.items()}
    assert all(urlsplit(u).username == user for user, u in urls.items())
    assert len(set(passwords.values())) == len(passwords)  # nobody shares a password
    expected = acl.acl_file(
        [
            (acl.ADMIN_USER, acl.admin_rules(), secret["admin-password"]),
            (acl.API_USER, acl.api_rules(), passwords[acl.API_USER]),
            (acl.OPERATOR_USER, acl.operator_rules(), passwords[acl.OPERATOR_USER]),
            *[
                (acl.job_user(s), acl.job_user_rules(s), passwords[acl.job_user(s)])
                for s in SCHOOLS
            ],
        ]
    )
    assert secret["users.acl"] == expected
    for password in [*passwords.values(), secret["password"], secret["admin-password"]]:
        assert password not in secret["users.acl"]  # hashes only


def test_each_school_namespace_holds_only_its_own_job_user(docs: list[dict[str, Any]]) -> None:
    by_ns = {s["metadata"]["namespace"]: s for s in find(docs, "Secret", f"{FULL}-redis-url")}
    assert set(by_ns) == set(SCHOOLS)  # not the release namespace: the API/operator have their own
    for school, secret in by_ns.items():
        assert urlsplit(secret["stringData"]["url"]).username == acl.job_user(school)
        assert list(secret["stringData"]) == ["url"]
    every_secret = json.dumps([s for s in find(docs, "Secret") if s["metadata"]["namespace"] != NS])
    master = one(docs, "Secret", f"{FULL}-redis", NS)["stringData"]["password"]
    assert master not in every_secret


def test_the_redis_pod_takes_its_config_from_the_secret_never_argv_or_env(
    docs: list[dict[str, Any]],
) -> None:
    pod = one(docs, "StatefulSet", f"{FULL}-redis")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["redis-server", "/etc/redis/redis.conf"]
    assert "args" not in container and "env" not in container
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["secret"]["secretName"] == f"{FULL}-redis"
    assert {i["key"] for i in volume["secret"]["items"]} == {"redis.conf", "users.acl"}
    conf = one(docs, "Secret", f"{FULL}-redis", NS)["stringData"]["redis.conf"].splitlines()
    assert {
        "maxmemory 768mb",
        "maxmemory-policy noeviction",
        "aclfile /etc/redis/users.acl",
    } <= set(conf)


@pytest.fixture(scope="module")
def chart_redis(
    docs: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, dict[str, str]]]:
    """redis-server with the rendered redis.conf and users.acl (paths moved into a temp dir)."""
    work = tmp_path_factory.mktemp("chart-redis")
    secret = one(docs, "Secret", f"{FULL}-redis", NS)["stringData"]
    (work / "users.acl").write_text(secret["users.acl"])
    conf = secret["redis.conf"].replace("/etc/redis/users.acl", str(work / "users.acl"))
    conf = conf.replace("dir /data", f"dir {work}")
    with redis_server(work, config=conf) as server:
        yield server.port, {"admin": secret["admin-password"]}


def _client(url: str, port: int) -> redis.Redis:
    """The Secret's URL with the in-cluster Service name swapped for this test's server."""
    parts = urlsplit(url)
    return redis.Redis(
        host="127.0.0.1", port=port, username=parts.username, password=parts.password
    )


def test_each_rendered_url_reaches_exactly_its_users_keys(
    docs: list[dict[str, Any]], chart_redis: tuple[int, dict[str, str]]
) -> None:
    port, secrets_ = chart_redis
    urls = _urls(docs)
    admin = redis.Redis(
        host="127.0.0.1", port=port, username=acl.ADMIN_USER, password=secrets_["admin"]
    )
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert admin.config_get("maxmemory") == {"maxmemory": str(768 * 1024 * 1024)}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).get("x")  # the default user is off

    a = _client(urls[acl.job_user("school-a")], port)
    a.hset(keys.job_progress("school-a", "u1"), mapping={"done": 1, "total": 2})
    with pytest.raises(redis.exceptions.NoPermissionError):
        a.hset(keys.job_progress("school-b", "u1"), "done", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        a.flushall()
    op = _client(urls[acl.OPERATOR_USER], port)
    assert op.hmget(keys.job_progress("school-a", "u1"), "done", "total") == [b"1", b"2"]
    with pytest.raises(redis.exceptions.NoPermissionError):
        op.hset(keys.gallery("school-a", "7b", "m"), "s", b"x")
    api = _client(urls[acl.API_USER], port)
    assert api.set(keys.idempotency("school-b", "k"), "v", nx=True)
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.hset(keys.job_progress("school-a", "u1"), "done", 2)
    for c in (admin, a, op, api):
        c.close()


def test_an_external_rediss_ca_reaches_the_api_the_operator_and_job_pods(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _PEM
    url = "rediss://rollcall:pw@redis.example.org:6380/0"
    values = {
        "namespaces": SCHOOLS,
        "redis": {"enabled": False, "external": {"url": url, "caCert": ca}},
    }
    docs = render(tools_bin, tmp_path, values)
    maps = find(docs, "ConfigMap", f"{FULL}-redis-ca")
    assert {m["metadata"]["namespace"] for m in maps} == {NS, *SCHOOLS}
    assert all(m["data"]["ca.crt"].strip() == ca.strip() for m in maps)
    ca_file = str(redistls.CA_MOUNT / redistls.CA_KEY)
    for component, prefix in (("api", "ROLLCALL_API_"), ("operator", "ROLLCALL_OPERATOR_")):
        pod = one(docs, "Deployment", f"{FULL}-{component}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert env_of(container)[f"{prefix}REDIS_CA_FILE"] == ca_file
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "redis-ca"]
        assert mount == {"name": "redis-ca", "mountPath": str(redistls.CA_MOUNT), "readOnly": True}
        (volume,) = [v for v in pod["volumes"] if v["name"] == "redis-ca"]
        assert volume["configMap"]["name"] == f"{FULL}-redis-ca"
    operator = one(docs, "Deployment", f"{FULL}-operator")["spec"]["template"]["spec"]
    env = env_of(operator["containers"][0])
    for name in [n for n in os.environ if n.startswith("ROLLCALL_OPERATOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "rediss://from-secret:6380/0")
    settings = OperatorSettings()
    assert settings.job_redis_ca_configmap == f"{FULL}-redis-ca"
    assert settings.redis_ca_file == Path(ca_file)

    with pytest.raises(AssertionError, match="external rediss"):
        render(tools_bin, tmp_path, {"redis": {"external": {"caCert": ca}}})


_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTest\n-----END CERTIFICATE-----\n"
