"""charts/rollcall installed with the real helm into the real control plane.

The apiserver accepts every object; the pods the Deployments and the StatefulSet make are admitted
by PodSecurity `restricted` (the images cannot run here, so pods are pinned to a node that does not
exist: admission is what is tested); `kubectl auth can-i --as` each ServiceAccount proves RBAC is
exactly what each component needs; and the ServiceAccounts' own tokens do the operator's and the
API's real calls, including a Job built by the operator's builder from the chart's settings.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from helmchart import CHART, env_of, helm, helm_install, values_args
from localk8s import ControlPlane, wait_for
from redisrig import free_port
from rollcall_api.auth import hash_key
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_operator.builder import build_job
from rollcall_operator.settings import OperatorSettings

# The generated client types every field Optional; these tests read what they just created.
kube: Any = client
# Pods of this install would need real images; pin them to no node so they stay Pending.
NOWHERE = {"rollcall.io/test-node": "none"}
RJ = "recognitionjobs.rollcall.io"
PSA = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@dataclass
class Release:
    name: str
    namespace: str  # the release namespace (operator, API, Redis)
    schools: tuple[str, str]  # the `namespaces` value
    outsider: str  # a restricted namespace the chart does not serve
    full: str  # the fullname prefix
    kubeconfig: Path
    tools_bin: Path

    @property
    def operator_sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.full}-operator"

    @property
    def api_sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.full}-api"

    def kubectl(
        self, *args: str, check: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.tools_bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def can_i(self, who: str, verb: str, resource: str, namespace: str | None) -> bool:
        """``resource`` is ``plural.group``, ``plural.group/name`` or ``plural.group#subresource``."""
        where = ["-n", namespace] if namespace else []
        resource, _, sub = resource.partition("#")
        where += ["--subresource", sub] if sub else []
        result = self.kubectl("auth", "can-i", verb, resource, *where, "--as", who)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0


def make_namespace(core: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": PSA}})
    return name


def install_values(schools: list[str], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "namespaces": schools,
        "operator": {"nodeSelector": NOWHERE},
        "api": {
            "nodeSelector": NOWHERE,
            "keys": {"entries": {hash_key("rk_north"): {"school": "north", "namespaces": schools}}},
        },
        "redis": {"nodeSelector": NOWHERE},
        "job": {"nodeSelector": NOWHERE},
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value}
    return values


@pytest.fixture(scope="module")
def release(
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    tools_bin: Path,
    crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """One default install serving two school namespaces, shared by this module's tests."""
    assert "kopfpeerings.kopf.dev" in crds
    core = kube.CoreV1Api(k8s_api)
    home = make_namespace(core, "rc-home")
    schools = (make_namespace(core, "rc-school-a"), make_namespace(core, "rc-school-b"))
    outsider = make_namespace(core, "rc-outsider")
    name = f"rc{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp("install")
    helm_install(tools_bin, name, home, tmp, install_values(list(schools)), kubeconfig)
    rel = Release(name, home, schools, outsider, f"{name}-rollcall", kubeconfig, tools_bin)
    # The RBAC authorizer works from an informer cache: wait until it sees the new bindings.
    wait_for(lambda: rel.can_i(rel.api_sa, "create", RJ, schools[1]), "RBAC cache")
    yield rel
    helm(tools_bin, "uninstall", name, "--namespace", home, kubeconfig=kubeconfig, check=False)
    for ns in (home, *schools, outsider):
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


def test_install_is_accepted_and_every_pod_is_admitted_as_restricted(
    k8s_api: client.ApiClient, release: Release
) -> None:
    status = helm(
        release.tools_bin,
        "status",
        release.name,
        "--namespace",
        release.namespace,
        "-o",
        "json",
        kubeconfig=release.kubeconfig,
    )
    assert yaml.safe_load(status.stdout)["info"]["status"] == "deployed"
    core = kube.CoreV1Api(k8s_api)
    selector = f"app.kubernetes.io/instance={release.name}"

    def components() -> dict[str, int]:
        counts: dict[str, int] = {}
        for pod in core.list_namespaced_pod(release.namespace, label_selector=selector).items:
            component = pod.metadata.labels["app.kubernetes.io/component"]
            counts[component] = counts.get(component, 0) + 1
        return counts

    # operator 1 (Recreate), api 2, redis 1: each made by its controller and admitted by PodSecurity.
    wait_for(lambda: components() == {"operator": 1, "api": 2, "redis": 1}, "chart pods")
    for rs in kube.AppsV1Api(k8s_api).list_namespaced_replica_set(release.namespace).items:
        failures = [c for c in rs.status.conditions or [] if c.type == "ReplicaFailure"]
        assert not failures, failures
    # Objects in the school namespaces: Roles, bindings, the Redis URL and webhook Secrets, policies.
    for ns in release.schools:
        secrets = {s.metadata.name for s in core.list_namespaced_secret(ns).items}
        assert {f"{release.full}-redis-url", f"{release.full}-webhook"} <= secrets
        policies = kube.NetworkingV1Api(k8s_api).list_namespaced_network_policy(ns).items
        assert [p.metadata.name for p in policies] == [f"{release.full}-job"]
    assert f"{release.full}-redis-url" not in {
        s.metadata.name for s in core.list_namespaced_secret(release.outsider).items
    }


def test_helm_test_hook_pod_is_admitted_as_restricted(release: Release) -> None:
    hooks = helm(
        release.tools_bin,
        "get",
        "hooks",
        release.name,
        "--namespace",
        release.namespace,
        kubeconfig=release.kubeconfig,
    ).stdout
    (pod,) = [d for d in yaml.safe_load_all(hooks) if d and d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # A server-side dry run goes through admission, PodSecurity included.
    result = release.kubectl(
        "apply", "--dry-run=server", "-n", release.namespace, "-f", "-", stdin=yaml.safe_dump(pod)
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


# (who, verb, resource, namespace key, allowed). Namespace keys: "a"/"b" the schools, "home" the
# release namespace, "out" a namespace the chart does not serve, None cluster scope.
CAN_I = [
    # The API: RecognitionJobs in the school namespaces, nothing else.
    *[("api", verb, RJ, "a", True) for verb in ("create", "get", "list", "watch", "delete")],
    ("api", "create", RJ, "b", True),
    ("api", "update", RJ, "a", False),
    ("api", "patch", RJ, "a", False),
    ("api", "patch", f"{RJ}#status", "a", False),
    ("api", "create", RJ, "out", False),
    ("api", "create", RJ, "home", False),
    ("api", "list", RJ, None, False),
    ("api", "create", "jobs.batch", "a", False),
    ("api", "get", "jobs.batch", "a", False),
    ("api", "create", "pods", "a", False),
    ("api", "get", "pods", "a", False),
    ("api", "get", "secrets", "a", False),
    ("api", "get", "secrets", "home", False),
    # The operator: RJs + status, Jobs, Pods read, Events, the webhook Secret by name.
    *[("operator", verb, RJ, "a", True) for verb in ("get", "list", "watch", "patch")],
    ("operator", "patch", f"{RJ}#status", "a", True),
    ("operator", "update", f"{RJ}#finalizers", "a", True),
    ("operator", "create", RJ, "a", False),
    ("operator", "delete", RJ, "a", False),
    *[
        ("operator", verb, "jobs.batch", "b", True)
        for verb in ("create", "get", "list", "watch", "patch")
    ],
    ("operator", "delete", "jobs.batch", "a", False),
    ("operator", "create", "jobs.batch", "out", False),
    ("operator", "create", "jobs.batch", "home", False),
    ("operator", "list", "pods", "a", True),
    ("operator", "get", "pods", "a", True),
    ("operator", "watch", "pods", "a", True),  # the pod watch: Unschedulable reasons
    ("operator", "create", "pods", "a", False),
    ("operator", "delete", "pods", "a", True),  # a pod stuck on an unreachable Node (nodeloss.py)
    ("operator", "create", "events", "a", True),
    ("operator", "get", "secrets/{webhook}", "a", True),
    ("operator", "get", "secrets/other", "a", False),
    ("operator", "list", "secrets", "a", False),
    ("operator", "create", "secrets", "a", False),
    ("operator", "get", "secrets/{redis}", "home", False),
    ("operator", "list", "customresourcedefinitions.apiextensions.k8s.io", None, True),
    ("operator", "create", "customresourcedefinitions.apiextensions.k8s.io", None, False),
    ("operator", "list", "namespaces", None, True),
    ("operator", "list", RJ, "out", False),
    ("operator", "patch", "kopfpeerings.kopf.dev", "a", False),  # one replica: no peering
]


@pytest.mark.parametrize(
    ("who", "verb", "resource", "where", "allowed"),
    CAN_I,
    ids=[
        f"{w}-{v}-{re.sub(r'[.][a-z0-9.]+', '', r)}-{n}-{'yes' if a else 'no'}"
        for w, v, r, n, a in CAN_I
    ],
)
def test_service_accounts_can_do_exactly_what_they_need(
    release: Release, who: str, verb: str, resource: str, where: str | None, allowed: bool
) -> None:
    namespaces = {
        "a": release.schools[0],
        "b": release.schools[1],
        "home": release.namespace,
        "out": release.outsider,
        None: None,
    }
    resource = resource.format(webhook=f"{release.full}-webhook", redis=f"{release.full}-redis-url")
    sa = release.operator_sa if who == "operator" else release.api_sa
    assert release.can_i(sa, verb, resource, namespaces[where]) is allowed


def sa_client(
    control_plane: ControlPlane, release: Release, sa: str, tmp_path: Path
) -> client.ApiClient:
    """An ApiClient authenticated with a fresh token of the chart's ServiceAccount ``sa``."""
    token = release.kubectl(
        "create", "token", sa, "-n", release.namespace, "--duration", "10m", check=True
    ).stdout.strip()
    path = control_plane.kubeconfig_for(sa, token, tmp_path / f"kubeconfig-{sa}")
    api_client: client.ApiClient = config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
    return api_client


def rendered_operator_settings(
    release: Release, monkeypatch: pytest.MonkeyPatch, k8s_api: client.ApiClient
) -> OperatorSettings:
    deployment = kube.AppsV1Api(k8s_api).read_namespaced_deployment(
        f"{release.full}-operator", release.namespace
    )
    container = k8s_api.sanitize_for_serialization(deployment.spec.template.spec.containers[0])  # type: ignore[no-untyped-call]
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "redis://unused:6379/0")
    return OperatorSettings()


def test_service_account_tokens_do_the_components_real_calls(
    control_plane: ControlPlane,
    k8s_api: client.ApiClient,
    release: Release,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    school = release.schools[0]
    rj_body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": "math-7b"},
        "spec": {
            "classCode": "MATH-7B",
            "images": {"claimName": "photos"},
            "roster": ["s1", "s2"],
            "resources": {"gpus": 1},
        },
    }
    with sa_client(control_plane, release, f"{release.full}-api", tmp_path) as api_client:
        api = kube.CustomObjectsApi(api_client)
        rj = api.create_namespaced_custom_object(GROUP, VERSION, school, PLURAL, rj_body)
        forbidden_calls: list[Callable[[], object]] = [
            lambda: api.create_namespaced_custom_object(
                GROUP, VERSION, release.outsider, PLURAL, rj_body
            ),
            lambda: kube.BatchV1Api(api_client).list_namespaced_job(school),
            lambda: kube.CoreV1Api(api_client).list_namespaced_pod(school),
        ]
        for forbidden in forbidden_calls:
            with pytest.raises(ApiException) as err:
                forbidden()
            assert err.value.status == 403

    settings = rendered_operator_settings(release, monkeypatch, k8s_api)
    with sa_client(control_plane, release, f"{release.full}-operator", tmp_path) as op_client:
        batch = kube.BatchV1Api(op_client)
        custom = kube.CustomObjectsApi(op_client)
        core = kube.CoreV1Api(op_client)
        job = batch.create_namespaced_job(school, build_job(rj, settings))
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            school,
            PLURAL,
            "math-7b",
            {"status": {"phase": "Pending", "jobName": job.metadata.name}},
        )
        batch.patch_namespaced_job(job.metadata.name, school, {"spec": {"suspend": False}})
        secret = core.read_namespaced_secret(f"{release.full}-webhook", school)
        assert secret.data["secret"]
        with pytest.raises(ApiException) as err:
            core.read_namespaced_secret(f"{release.full}-redis-url", school)
        assert err.value.status == 403
        with pytest.raises(ApiException) as err:
            batch.delete_namespaced_job(job.metadata.name, school)
        assert err.value.status == 403

    # The Job controller makes the job pod; PodSecurity `restricted` admits it in the school
    # namespace, with the chart's GPU placement and the Redis URL from the chart's Secret.
    admin = kube.CoreV1Api(k8s_api)
    selector = f"batch.kubernetes.io/controller-uid={job.metadata.uid}"
    wait_for(lambda: admin.list_namespaced_pod(school, label_selector=selector).items, "job pod")
    pod = admin.list_namespaced_pod(school, label_selector=selector).items[0]
    assert pod.spec.node_selector == NOWHERE
    assert pod.spec.automount_service_account_token is False
    (container,) = pod.spec.containers
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    redis_ref = next(e for e in container.env if e.name == "ROLLCALL_REDIS_URL")
    assert redis_ref.value_from.secret_key_ref.name == f"{release.full}-redis-url"


def test_a_weakened_security_context_is_rejected_by_pod_security(
    k8s_api: client.ApiClient, kubeconfig: Path, tools_bin: Path, namespace: str, tmp_path: Path
) -> None:
    """Control for the admission test above: the same install with privilege escalation allowed
    is accepted as objects, but its pods are rejected, so their absence would have been noticed."""
    name = f"rw{uuid.uuid4().hex[:6]}"
    values = install_values(
        [namespace],
        securityContext={"allowPrivilegeEscalation": True},
        api={"enabled": False},
        redis={"enabled": False, "external": {"url": "redis://r:6379/0"}},
    )
    helm_install(tools_bin, name, namespace, tmp_path, values, kubeconfig)
    try:
        apps = kube.AppsV1Api(k8s_api)

        def rejected() -> bool:
            for rs in apps.list_namespaced_replica_set(namespace).items:
                for c in rs.status.conditions or []:
                    if c.type == "ReplicaFailure" and "PodSecurity" in (c.message or ""):
                        return True
            return False

        wait_for(rejected, "the ReplicaSet to report the PodSecurity rejection")
        assert not kube.CoreV1Api(k8s_api).list_namespaced_pod(namespace).items
    finally:
        helm(tools_bin, "uninstall", name, "-n", namespace, kubeconfig=kubeconfig, check=False)


def test_scaled_cluster_wide_operator_gets_a_cluster_peering(
    k8s_api: client.ApiClient,
    crds: list[str],
    kubeconfig: Path,
    tools_bin: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    name = f"rp{uuid.uuid4().hex[:6]}"
    values = install_values(
        [namespace],
        operator={"replicas": 2, "clusterWide": True, "nodeSelector": NOWHERE},
        api={"enabled": False},
        redis={"enabled": False, "external": {"url": "redis://r:6379/0"}},
    )
    helm_install(tools_bin, name, namespace, tmp_path, values, kubeconfig)
    try:
        full = f"{name}-rollcall"
        custom = kube.CustomObjectsApi(k8s_api)
        peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", full)
        assert peering["metadata"]["name"] == full
        rel = Release(
            name, namespace, (namespace, namespace), "default", full, kubeconfig, tools_bin
        )
        sa = rel.operator_sa
        wait_for(lambda: rel.can_i(sa, "list", RJ, None), "RBAC cache")
        assert rel.can_i(sa, "patch", "clusterkopfpeerings.kopf.dev", None)
        assert rel.can_i(sa, "create", "jobs.batch", "default")
        assert not rel.can_i(sa, "create", "pods", "default")
        assert not rel.can_i(sa, "list", "secrets", "default")
        core = kube.CoreV1Api(k8s_api)
        selector = "app.kubernetes.io/component=operator"
        wait_for(
            lambda: len(core.list_namespaced_pod(namespace, label_selector=selector).items) == 2,
            "two admitted operator pods",
        )
    finally:
        helm(tools_bin, "uninstall", name, "-n", namespace, kubeconfig=kubeconfig, check=False)
    with pytest.raises(ApiException):
        custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", full)


# --- the real processes under the chart's ServiceAccounts and environment -------------------------


class Process:
    """A component run as a local process with the environment the chart renders for its pod."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, health: str) -> None:
        self.log, self.health = log, health
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.logs()}")
            with urllib.request.urlopen(self.health, timeout=2) as resp:
                return bool(resp.status == 200)

        try:
            wait_for(healthy, self.health, timeout=timeout, interval=0.3)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-8000:]


def rendered_env(k8s_api: client.ApiClient, release: Release, component: str) -> dict[str, str]:
    """The literal env of the chart's Deployment for ``component`` (valueFrom entries left out)."""
    deployment = kube.AppsV1Api(k8s_api).read_namespaced_deployment(
        f"{release.full}-{component}", release.namespace
    )
    container = k8s_api.sanitize_for_serialization(deployment.spec.template.spec.containers[0])  # type: ignore[no-untyped-call]
    return {k: v for k, v in env_of(container).items() if isinstance(v, str)}


def base_env(prefix: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}


@pytest.mark.slow
def test_operator_and_api_run_under_the_charts_service_accounts(
    control_plane: ControlPlane,
    k8s_api: client.ApiClient,
    release: Release,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """REST -> RecognitionJob -> Job with each process holding only its chart ServiceAccount's
    token and the chart's environment: nothing it does is forbidden."""
    school = release.schools[1]
    tokens = {
        sa: release.kubectl(
            "create", "token", f"{release.full}-{sa}", "-n", release.namespace, check=True
        ).stdout.strip()
        for sa in ("operator", "api")
    }
    kubeconfigs = {
        sa: control_plane.kubeconfig_for(sa, token, tmp_path / f"kubeconfig-{sa}")
        for sa, token in tokens.items()
    }

    op_env = {
        **base_env("ROLLCALL_OPERATOR_"),
        **rendered_env(k8s_api, release, "operator"),
        "KUBECONFIG": str(kubeconfigs["operator"]),
        "ROLLCALL_OPERATOR_REDIS_URL": redis_url,
        "ROLLCALL_OPERATOR_METRICS_PORT": "0",
        "ROLLCALL_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
    }
    keys_secret = kube.CoreV1Api(k8s_api).read_namespaced_secret(
        f"{release.full}-api-keys", release.namespace
    )
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_bytes(base64.b64decode(keys_secret.data["keys.yaml"]))
    api_port = free_port()
    api_env = {
        **base_env("ROLLCALL_API_"),
        **rendered_env(k8s_api, release, "api"),
        "ROLLCALL_API_KUBECONFIG": str(kubeconfigs["api"]),
        "ROLLCALL_API_REDIS_URL": redis_url,
        "ROLLCALL_API_KEYS_FILE": str(keys_file),
        "ROLLCALL_API_HOST": "127.0.0.1",
        "ROLLCALL_API_PORT": str(api_port),
    }
    api_url = f"http://127.0.0.1:{api_port}"
    operator = Process(
        [sys.executable, "-m", "rollcall_operator"],
        op_env,
        tmp_path / "operator.log",
        op_env["ROLLCALL_OPERATOR_LIVENESS_ENDPOINT"],
    )
    api = Process(
        [sys.executable, "-m", "rollcall_api"], api_env, tmp_path / "api.log", f"{api_url}/readyz"
    )
    try:
        operator.wait_healthy()
        api.wait_healthy()  # /readyz: apiserver, Redis and keys, as the helm test hook asks
        body = {
            "namespace": school,
            "classCode": "7B-maths",
            "images": {"claimName": "photos"},
            "roster": ["s-001", "s-002"],
            "resources": {"gpus": 1},
        }
        request = urllib.request.Request(
            f"{api_url}/v1/recognition-jobs",
            data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer rk_north", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status in (200, 201, 202)
        custom = kube.CustomObjectsApi(k8s_api)

        def job_name() -> str | None:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, school, PLURAL)["items"]
            return items and (items[0].get("status") or {}).get("jobName")

        try:
            wait_for(job_name, "the operator to record the RJ's Job", timeout=60)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{operator.logs()}") from None
        name = job_name()
        job = kube.BatchV1Api(k8s_api).read_namespaced_job(name, school)
        assert job.spec.template.spec.node_selector == NOWHERE  # the chart's job.nodeSelector
    finally:
        operator.stop()
        api.stop()
    for process in (operator, api):
        logs = process.logs()
        # A bare "403" would also match ports and request ids: look for what a denial prints.
        for marker in (
            '"status": 403',
            " 403 ",
            "Forbidden",
            "forbidden",
            "Not enough permissions",
        ):
            assert marker not in logs, f"{marker!r} in {process.log.name}:\n{logs}"


@pytest.mark.slow
def test_scaled_operator_keeps_its_heartbeat_in_the_charts_kopf_peering(
    control_plane: ControlPlane,
    k8s_api: client.ApiClient,
    crds: list[str],
    kubeconfig: Path,
    tools_bin: Path,
    namespace: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """operator.replicas=2: the chart's KopfPeering and Role let the real operator, under its own
    ServiceAccount, join the election (kopf writes each replica's heartbeat into the status)."""
    name = f"rk{uuid.uuid4().hex[:6]}"
    values = install_values(
        [namespace],
        operator={"replicas": 2, "nodeSelector": NOWHERE},
        api={"enabled": False},
        redis={"enabled": False, "external": {"url": redis_url}},
    )
    helm_install(tools_bin, name, namespace, tmp_path, values, kubeconfig)
    full = f"{name}-rollcall"
    rel = Release(name, namespace, (namespace, namespace), "default", full, kubeconfig, tools_bin)
    custom = kube.CustomObjectsApi(k8s_api)
    operator: Process | None = None
    try:
        wait_for(
            lambda: rel.can_i(rel.operator_sa, "patch", "kopfpeerings.kopf.dev", namespace),
            "RBAC cache",
        )
        token = rel.kubectl("create", "token", f"{full}-operator", "-n", namespace, check=True)
        env = {
            **base_env("ROLLCALL_OPERATOR_"),
            **rendered_env(k8s_api, rel, "operator"),
            "KUBECONFIG": str(
                control_plane.kubeconfig_for("op", token.stdout.strip(), tmp_path / "kc")
            ),
            "ROLLCALL_OPERATOR_METRICS_PORT": "0",
            "ROLLCALL_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        }
        assert env["ROLLCALL_OPERATOR_PEERING_NAME"] == full
        operator = Process(
            [sys.executable, "-m", "rollcall_operator"],
            env,
            tmp_path / "op.log",
            env["ROLLCALL_OPERATOR_LIVENESS_ENDPOINT"],
        )
        operator.wait_healthy()

        def heartbeats() -> dict[str, Any]:
            peering = custom.get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", full
            )
            return dict(peering.get("status") or {})

        try:
            wait_for(heartbeats, "a heartbeat in the KopfPeering", timeout=60)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{operator.logs()}") from None
        (peer,) = heartbeats().values()
        # no operator.peeringPriority: a random one per replica, never kopf's shared default 0
        assert "ROLLCALL_OPERATOR_PRIORITY" not in env
        assert peer["priority"] > 0
    finally:
        if operator is not None:
            operator.stop()
        helm(tools_bin, "uninstall", name, "-n", namespace, kubeconfig=kubeconfig, check=False)
    logs = operator.logs()
    for marker in ("403", "Forbidden", "forbidden", "Not enough permissions"):
        assert marker not in logs, f"{marker!r} in the operator log:\n{logs}"


def test_upgrade_keeps_generated_secrets_and_does_not_roll_pods(
    k8s_api: client.ApiClient, release: Release, tmp_path: Path
) -> None:
    core = kube.CoreV1Api(k8s_api)
    apps = kube.AppsV1Api(k8s_api)

    def state() -> tuple[bytes, bytes, bytes, dict[str, str]]:
        redis = core.read_namespaced_secret(f"{release.full}-redis", release.namespace)
        url = core.read_namespaced_secret(f"{release.full}-redis-url", release.schools[0])
        hook = core.read_namespaced_secret(f"{release.full}-webhook", release.schools[1])
        templates = {
            c: apps.read_namespaced_deployment(
                f"{release.full}-{c}", release.namespace
            ).spec.template.metadata.annotations["checksum/redis-url"]
            for c in ("operator", "api")
        }
        return redis.data["password"], url.data["url"], hook.data["secret"], templates

    before = state()
    helm_install(
        release.tools_bin,
        release.name,
        release.namespace,
        tmp_path,
        install_values(list(release.schools)),
        release.kubeconfig,
        verb="upgrade",
    )
    assert state() == before


def test_every_optional_object_is_valid_for_the_apiserver(
    k8s_api: client.ApiClient,
    crds: list[str],
    kubeconfig: Path,
    tools_bin: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Everything switched on (Ingress, HPA, peering, external Redis peers, policies with
    selectors), rendered and sent as a server-side dry run: schema, defaulting and admission."""
    values = install_values(
        [namespace],
        operator={"replicas": 2, "nodeSelector": NOWHERE, "extraEnv": [{"name": "X", "value": "1"}]},
        api={
            "autoscaling": {"enabled": True},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "rc.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "rc-tls", "hosts": ["rc.example.org"]}],
            },
        },
        redis={"enabled": False, "external": {"url": "rediss://:pw@10.1.2.3:6380/0", "port": 6380, "egressTo": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]}},
        networkPolicy={"apiIngressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]},
        webhook={"allowCidrs": ["10.20.0.0/16"], "allowHosts": ["*.district.svc"], "allowHttp": True},
    )  # fmt: skip
    rendered = helm(
        tools_bin,
        "template",
        f"rd{uuid.uuid4().hex[:6]}",
        str(CHART),
        "-n",
        namespace,
        *values_args(tmp_path, values),
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Ingress", "HorizontalPodAutoscaler", "KopfPeering", "NetworkPolicy"} <= kinds
    result = subprocess.run(
        [str(tools_bin / "kubectl"), "--kubeconfig", str(kubeconfig), "apply",
         "--dry-run=server", "-n", namespace, "-f", "-"],
        input=rendered, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
