"""The whole of rollcall on one machine: control plane, Redis, node agent, operator and API.

Used by ``make demo`` (hack/demo.py) and the end-to-end tests. Every piece is the real thing: the
Go-built control plane, Debian's redis-server, the operator and API as their own processes (their
console scripts, configured only through their documented environment variables), and the node
agent running each scheduled Job pod's command (``rollcall-job``) as a local process. Redis runs
with the ACL users of ``rollcall_contract.acl``, as the chart's does: each school namespace's Secret
holds its own job user's URL; the operator and the API have their own users.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from localk8s import (
    ControlPlane,
    control_plane,
    install_crds,
    local_volume,
    restricted_namespace,
)
from nodeagent import NodeAgent, ProcessRunner
from redisrig import RedisServer, free_port, redis_server
from rollcall_contract import acl

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "charts" / "rollcall" / "crds"
BIN = Path(sys.executable).parent
IMAGE_MODEL_DIR = "/opt/rollcall/models"  # where the Dockerfile's job image keeps its models


@dataclass
class Stack:
    workdir: Path
    cp: ControlPlane
    redis: RedisServer
    api: client.ApiClient
    agent: NodeAgent
    api_url: str
    api_keys: dict[str, str]  # school -> key
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_urls: dict[str, str] = field(default_factory=dict)  # ACL user -> URL (admin: for people)

    def claim(self, namespace: str, name: str, *, read_only: bool = True) -> Path:
        """A bound PVC in ``namespace`` backed by a local folder (returned) the job pods mount."""
        folder = self.workdir / "claims" / namespace / name
        local_volume(client.CoreV1Api(self.api), namespace, name, folder, read_only=read_only)
        return folder

    def cli_env(self, school: str) -> dict[str, str]:
        return {
            **os.environ,
            "ROLLCALL_URL": self.api_url,
            "ROLLCALL_API_KEY": self.api_keys[school],
        }

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def school_namespace(api: client.ApiClient, name: str, redis_url: str) -> None:
    """A namespace as a cluster admin prepares it for a school: restricted pods, the Redis Secret."""
    restricted_namespace(api, name)
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        name,
        client.V1Secret.model_validate(
            {"metadata": {"name": "rollcall-redis"}, "stringData": {"url": redis_url}}
        ),
    )


def _spawn(
    stack_procs: dict[str, subprocess.Popen[bytes]],
    workdir: Path,
    name: str,
    argv: list[str],
    env: dict[str, str],
) -> None:
    with (workdir / f"{name}.log").open("ab") as log:
        stack_procs[name] = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_url(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    def ok() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except RuntimeError:
            raise
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready at {url}")


def redis_users(namespaces: list[str]) -> dict[str, list[str]]:
    """ACL user -> rules: the admin (for people), the API, the operator, each school's jobs."""
    users = {
        acl.ADMIN_USER: acl.admin_rules(),
        acl.API_USER: acl.api_rules(),
        acl.OPERATOR_USER: acl.operator_rules(),
    }
    return users | {acl.job_user(ns): acl.job_user_rules(ns) for ns in namespaces}


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    *,
    schools: dict[str, list[str]],
    model_dir: Path | None = None,
    operator_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start everything; ``schools`` maps a school name to its namespaces (created here)."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    users = redis_users(sorted({ns for group in schools.values() for ns in group}))
    passwords = {user: secrets.token_urlsafe(24) for user in users}
    acl_file = workdir / "redis-users.acl"
    acl_file.write_text(acl.acl_file([(u, rules, passwords[u]) for u, rules in users.items()]))
    acl_file.chmod(0o600)
    with (
        control_plane(workdir / "controlplane") as cp,
        redis_server(workdir / "redis", config=f"aclfile {acl_file}\n") as redis,
    ):
        urls = {u: f"redis://{u}:{p}@127.0.0.1:{redis.port}/0" for u, p in passwords.items()}
        # kubernetes.config ships without annotations (despite the package's py.typed).
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(cp.kubeconfig)
        )
        install_crds(api, CRD_DIR)
        for namespaces in schools.values():
            for ns in namespaces:
                school_namespace(api, ns, urls[acl.job_user(ns)])
        # The job image carries its models at IMAGE_MODEL_DIR; here the node agent serves that
        # path from the local model build, and the Job is told the image's path, not a host one.
        image_paths = {IMAGE_MODEL_DIR: model_dir} if model_dir is not None else {}
        runner = ProcessRunner(
            api, workdir / "node", extra_path=[str(BIN)], image_paths=image_paths
        )
        agent = NodeAgent(api, "gpu-node-0", runner).start()

        keys = {school: f"rk_{secrets.token_urlsafe(32)}" for school in schools}
        sys.path.insert(0, str(REPO / "api"))
        from rollcall_api.auth import hash_key

        key_file = workdir / "api-keys.yaml"
        key_file.write_text(
            yaml.safe_dump(
                {
                    hash_key(keys[s]): {"school": s, "namespaces": namespaces}
                    for s, namespaces in schools.items()
                }
            )
        )
        key_file.chmod(0o600)

        op_health = free_port()
        job_env: dict[str, str] = {}
        if model_dir is not None:
            job_env["MODEL_DIR"] = IMAGE_MODEL_DIR
        _spawn(
            procs,
            workdir,
            "operator",
            [str(BIN / "rollcall-operator")],
            {
                "ROLLCALL_OPERATOR_KUBECONFIG": str(cp.kubeconfig),
                "ROLLCALL_OPERATOR_REDIS_URL": urls[acl.OPERATOR_USER],
                "ROLLCALL_OPERATOR_IMAGE": "rollcall-job:local",
                "ROLLCALL_OPERATOR_COMMAND": '["rollcall-job"]',
                "ROLLCALL_OPERATOR_EXTRA_ENV": _json(job_env),
                "ROLLCALL_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{op_health}/healthz",
                "ROLLCALL_OPERATOR_METRICS_PORT": str(free_port()),
                "ROLLCALL_OPERATOR_PROGRESS_INTERVAL_SECONDS": "1",
                **(operator_env or {}),
            },
        )
        api_port = free_port()
        _spawn(
            procs,
            workdir,
            "api",
            [str(BIN / "rollcall-api")],
            {
                "ROLLCALL_API_KUBECONFIG": str(cp.kubeconfig),
                "ROLLCALL_API_KEYS_FILE": str(key_file),
                "ROLLCALL_API_REDIS_URL": urls[acl.API_USER],
                "ROLLCALL_API_HOST": "127.0.0.1",
                "ROLLCALL_API_PORT": str(api_port),
                "ROLLCALL_API_LOG_JSON": "false",
                "ROLLCALL_API_DOCS_ENABLED": "true",  # the demo shows the API docs
            },
        )
        api_url = f"http://127.0.0.1:{api_port}"
        stack = Stack(workdir, cp, redis, api, agent, api_url, keys, procs, redis_urls=urls)
        try:
            _wait_url(f"http://127.0.0.1:{op_health}/healthz", procs["operator"], "operator")
            _wait_url(f"{api_url}/readyz", procs["api"], "API")
            yield stack
        except BaseException:
            for name in procs:
                print(f"===== {name} log (tail) =====\n{stack.log(name)[-3000:]}", flush=True)
            raise
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            agent.stop()
            api.close()  # type: ignore[no-untyped-call]  # ApiClient.close is unannotated


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
