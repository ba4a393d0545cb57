"""charts/rollcall rendered with the real helm: lint, the schema, security contexts, RBAC rules,
NetworkPolicies, and values flowing into the operator's and the API's real settings classes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmchart import CHART, env_of, find, helm, one, pod_specs, render, values_args
from rollcall_api.auth import hash_key, parse_key_file
from rollcall_api.settings import Settings as ApiSettings
from rollcall_contract.model import GROUP, PLURAL
from rollcall_operator.builder import build_job
from rollcall_operator.settings import ENV_PREFIX, OperatorSettings

REL = "rc"
NS = "rollcall"
FULL = "rc-rollcall"
DIGEST = hash_key("rk_test-key")


@pytest.fixture(scope="module")
def default_docs(tools_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tools_bin, tmp_path_factory.mktemp("render"))


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", f"{FULL}-operator")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", f"{FULL}-api")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def operator_settings(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> OperatorSettings:
    """The real OperatorSettings the operator would build from the rendered environment."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env_of(operator_container(docs)).items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "redis://from-secret:6379/0")
    return OperatorSettings()


# --- lint and schema -------------------------------------------------------------------------------


def test_helm_lint_passes_strict_with_defaults_and_with_a_gpu_cluster_setup(
    tools_bin: Path, tmp_path: Path
) -> None:
    helm(tools_bin, "lint", "--strict", str(CHART))
    gpu_values = {
        "namespaces": ["school-a", "school-b"],
        "gpu": {"runtimeClassName": "nvidia", "nodeSelector": {"nvidia.com/gpu.present": "true"}},
        "operator": {"replicas": 2},
        "api": {
            "ingress": {
                "enabled": True,
                "hosts": [{"host": "rc.example.org", "paths": [{"path": "/"}]}],
            }
        },
        "redis": {"enabled": False, "external": {"url": "rediss://:pw@redis.example.org:6380/0"}},
    }
    helm(tools_bin, "lint", "--strict", str(CHART), *values_args(tmp_path, gpu_values))


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"replica": 2}}, "replica"),  # typo of replicas
        ({"namespace": ["school-a"]}, "namespace"),  # typo of namespaces
        ({"gpu": {"resource": "nvidia.com/gpu"}}, "resource"),
        (
            {"api": {"keys": {"entries": {"not-a-digest": {"school": "x", "namespaces": ["a"]}}}}},
            "not-a-digest",
        ),
        (
            {"api": {"keys": {"entries": {DIGEST: {"school": "x", "namespace": ["a"]}}}}},
            "namespace",
        ),
        ({"namespaces": ["School_A"]}, "School_A"),
        ({"operator": {"replicas": "two"}}, "replicas"),
        ({"redis": {"external": {"url": "http://redis:6379"}}}, "url"),
        ({"job": {"extraEnv": {"batch_size": 64}}}, "batch_size"),  # settings values are strings
        ({"gpu": {"tolerations": [{"key": "x", "operator": "Exist"}]}}, "operator"),
        # a card name, as spec.model: never a path out of the model dir
        ({"models": {"default": "../mobilefacenet-sirius-int8-v2"}}, "/models/default"),
    ],
)
def test_schema_rejects_typos_and_bad_values(
    tools_bin: Path, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    lint = helm(tools_bin, "lint", str(CHART), *values_args(tmp_path, values), check=False)
    assert lint.returncode != 0
    assert complaint in lint.stdout + lint.stderr
    template = helm(
        tools_bin, "template", "rc", str(CHART), *values_args(tmp_path, values), check=False
    )
    assert template.returncode != 0
    assert "schema" in template.stderr


def test_render_fails_readably_on_inconsistent_values(tools_bin: Path, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"redis": {"enabled": False}}, "redis.external.url"),
        (
            {
                "namespaces": ["school-a"],
                "api": {"keys": {"entries": {DIGEST: {"school": "x", "namespaces": ["school-b"]}}}},
            },
            '"school-b"',
        ),
        ({"webhook": {"signingSecret": {"create": False}}}, "webhook.signingSecret.name"),
    ]
    for values, message in cases:
        result = helm(
            tools_bin, "template", "rc", str(CHART), *values_args(tmp_path, values), check=False
        )
        assert result.returncode != 0, values
        assert message in result.stderr, result.stderr


def test_every_value_is_documented_where_it_is_declared() -> None:
    """Each key of values.yaml has a comment right above it, or is a mapping whose keys all do."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous = ""
    for line in lines:
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match:
            if line.strip():
                previous = line
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = previous.strip().startswith("#") or any(d for _, _, d in stack)
        path = ".".join([k for _, k, _ in stack] + [key])
        stack.append((indent, key, documented))
        previous = line
        leaf = bool(rest) and not rest.startswith("#")
        if leaf and not documented:
            undocumented.append(path)
    # Mappings written as blocks (e.g. `limits:` then children) count through their children.
    assert not undocumented, f"values without a comment where declared: {undocumented}"


def test_readme_values_table_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node and prefix not in _WHOLE_VALUES:
            return [p for k, v in node.items() for p in leaves(v, f"{prefix}.{k}" if prefix else k)]
        return [prefix]

    missing = [p for p in leaves(values, "") if f"`{p}`" not in readme]
    assert not missing, f"charts/rollcall/README.md lacks rows for {missing}"


# Values documented as one block (their inner keys are Kubernetes fields, not chart settings).
_WHOLE_VALUES = {
    "podSecurityContext",
    "securityContext",
    "operator.resources",
    "api.resources",
    "redis.resources",
}


# --- security contexts ---------------------------------------------------------------------------


def test_every_pod_meets_the_restricted_pod_security_standard(
    tools_bin: Path, tmp_path: Path
) -> None:
    everything_on = {
        "namespaces": ["school-a"],
        "api": {"autoscaling": {"enabled": True}, "ingress": {"enabled": True}},
        "operator": {"replicas": 3},
    }
    docs = render(tools_bin, tmp_path, everything_on)
    pods = dict(pod_specs(docs))
    assert set(pods) == {
        f"Deployment/{FULL}-operator",
        f"Deployment/{FULL}-api",
        f"StatefulSet/{FULL}-redis",
        f"Pod/{FULL}-test-readyz",
    }
    for where, spec in pods.items():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] != 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "privileged" not in sc, where
            assert c["resources"]["limits"], where
            # A read-only root filesystem needs a writable /tmp (Python, uvicorn, kopf).
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts or where.startswith("Pod/"), where


def test_only_the_operator_and_api_mount_a_service_account_token(
    default_docs: list[dict[str, Any]],
) -> None:
    for where, spec in pod_specs(default_docs):
        if where.startswith("Deployment/"):
            assert spec["serviceAccountName"] in (f"{FULL}-operator", f"{FULL}-api")
        else:
            assert spec["automountServiceAccountToken"] is False, where


# --- the operator ---------------------------------------------------------------------------------


def test_one_operator_replica_is_standalone_with_recreate(
    default_docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = one(default_docs, "Deployment", f"{FULL}-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    settings = operator_settings(default_docs, monkeypatch)
    assert settings.peering_name is None
    assert settings.namespaces == [NS]  # empty `namespaces`: the release namespace
    assert not find(default_docs, "KopfPeering") and not find(default_docs, "ClusterKopfPeering")
    probe = operator_container(default_docs)["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in operator_container(default_docs)["ports"]}
    assert settings.liveness_endpoint == f"http://0.0.0.0:{ports['health']}/healthz"
    assert settings.metrics_port == ports["metrics"]


def test_several_operator_replicas_elect_a_leader_through_kopf_peering(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(tools_bin, tmp_path, {"operator": {"replicas": 3}, "namespaces": ["a", "b"]})
    deployment = one(docs, "Deployment", f"{FULL}-operator")
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    settings = operator_settings(docs, monkeypatch)
    assert settings.peering_name == FULL
    peerings = find(docs, "KopfPeering")
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings} == {
        ("a", FULL),
        ("b", FULL),
    }
    crds = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    assert {c["spec"]["names"]["kind"] for c in crds} == {"KopfPeering", "ClusterKopfPeering"}
    for role in find(docs, "Role", f"{FULL}-operator"):
        assert {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        } in role["rules"]

    docs = render(tools_bin, tmp_path, {"operator": {"replicas": 2, "clusterWide": True}})
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == FULL
    assert not find(docs, "KopfPeering")
    settings = operator_settings(docs, monkeypatch)
    assert settings.namespaces == []  # kopf --all-namespaces
    cluster_role = one(docs, "ClusterRole", f"{FULL}-operator-framework")
    assert any("clusterkopfpeerings" in r["resources"] for r in cluster_role["rules"])
    assert not find(docs, "Role", f"{FULL}-operator")


def test_gpu_and_job_values_reach_the_operator_and_the_jobs_it_builds(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values: dict[str, Any] = {
        "namespaces": ["school-a"],
        "gpu": {
            "resourceName": "amd.com/gpu",
            "runtimeClassName": "nvidia",
            "nodeSelector": {"gpu.example.org/model": "l4"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "job": {
            "image": {
                "repository": "registry.example.org/rollcall-job",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "nodeSelector": {"pool": "batch"},
            "tolerations": [
                {"key": "batch", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
            ],
            "priorityClassName": "rollcall-jobs",
            "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "extraEnv": {"batch_size": "64"},
            "podAnnotations": {"example.org/team": "attendance"},
            "annotationPassthroughPrefixes": ["example.org/"],
            "tmpSizeLimit": "3Gi",
        },
        "models": {"dir": "/models/custom"},
        "operator": {"queue": {"maxRunning": 4, "maxRunningPerNamespace": 2}},
    }
    docs = render(tools_bin, tmp_path, values)
    s = operator_settings(docs, monkeypatch)
    assert s.image == "registry.example.org/rollcall-job:1.2.3"
    assert s.image_pull_policy == "Always"
    assert s.gpu_resource == "amd.com/gpu"
    assert s.runtime_class_name == "nvidia"
    assert s.gpu_node_selector == {"gpu.example.org/model": "l4"}
    assert s.gpu_tolerations == values["gpu"]["tolerations"]
    assert s.node_selector == {"pool": "batch"}
    assert s.tolerations == values["job"]["tolerations"]
    assert s.priority_class_name == "rollcall-jobs"
    assert s.max_running == 4 and s.max_running_per_namespace == 2
    assert s.redis_secret_name == f"{FULL}-redis-url" and s.redis_secret_key == "url"
    assert s.namespaces == ["school-a"]
    assert s.tmp_size_limit == "3Gi"
    assert s.extra_env == {
        "batch_size": "64",
        "providers": '["CUDAExecutionProvider","CPUExecutionProvider"]',
        "model_dir": "/models/custom",
    }

    rj = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": {
            "name": "math-7b",
            "namespace": "school-a",
            "uid": "u-1",
            "annotations": {"example.org/ticket": "42", "other.org/x": "y"},
        },
        "spec": {
            "classCode": "MATH-7B",
            "images": {"claimName": "photos"},
            "roster": ["s1"],
            "resources": {"gpus": 1},
        },
    }
    job = build_job(rj, s)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"pool": "batch", "gpu.example.org/model": "l4"}
    configured = values["job"]["tolerations"] + values["gpu"]["tolerations"]
    assert pod["tolerations"][: len(configured)] == configured
    assert s.node_lost_toleration_seconds == s.lost_pod_timeout_seconds == 60  # chart defaults
    assert container["resources"]["limits"]["amd.com/gpu"] == "1"
    assert container["image"] == "registry.example.org/rollcall-job:1.2.3"
    job_env = env_of(container)
    assert job_env["ROLLCALL_PROVIDERS"] == '["CUDAExecutionProvider","CPUExecutionProvider"]'
    assert job_env["ROLLCALL_MODEL_DIR"] == "/models/custom"
    assert job_env["ROLLCALL_REDIS_URL"] == {
        "secretKeyRef": {"name": f"{FULL}-redis-url", "key": "url"}
    }
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "example.org/team": "attendance",
        "example.org/ticket": "42",
    }


def test_operator_env_names_are_real_settings(default_docs: list[dict[str, Any]]) -> None:
    """A misspelt ROLLCALL_OPERATOR_* variable would be ignored silently (extra="ignore")."""
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in OperatorSettings.model_fields}
    fields.add(f"{ENV_PREFIX}LOG_LEVEL")  # read by rollcall_operator.__main__ itself
    assert set(env_of(operator_container(default_docs))) <= fields


def test_models_default_reaches_the_operator_and_the_jobs_of_rjs_naming_no_card(
    tools_bin: Path,
    tmp_path: Path,
    default_docs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``models.default`` becomes the operator's default_model; ``""`` (the chart's default)
    renders no variable, so the jobs keep the image's built-in model."""
    rj: dict[str, Any] = {
        "metadata": {"name": "math-7b", "namespace": NS, "uid": "u-1"},
        "spec": {"classCode": "MATH-7B", "images": {"claimName": "photos"}, "roster": ["s1"]},
    }
    named = {**rj, "spec": {**rj["spec"], "model": "dlib-resnet-v1"}}
    var = f"{ENV_PREFIX}DEFAULT_MODEL"

    assert var not in env_of(operator_container(default_docs))
    s = operator_settings(default_docs, monkeypatch)
    assert s.default_model is None
    assert (
        env_of(build_job(rj, s)["spec"]["template"]["spec"]["containers"][0])["ROLLCALL_MODEL"]
        == "default"
    )

    docs = render(tools_bin, tmp_path, {"models": {"default": "mobilefacenet-sirius-int8-v2"}})
    assert env_of(operator_container(docs))[var] == "mobilefacenet-sirius-int8-v2"
    s = operator_settings(docs, monkeypatch)
    assert s.default_model == "mobilefacenet-sirius-int8-v2"
    for body, model in ((rj, "mobilefacenet-sirius-int8-v2"), (named, "dlib-resnet-v1")):
        container = build_job(body, s)["spec"]["template"]["spec"]["containers"][0]
        assert env_of(container)["ROLLCALL_MODEL"] == model


# --- the API --------------------------------------------------------------------------------------


def test_api_values_reach_the_api_settings_and_its_key_file(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    values = {
        "namespaces": ["school-a", "school-b"],
        "api": {
            "publicUrl": "https://rc.example.org",
            "port": 9000,
            "keys": {
                "entries": {
                    DIGEST: {"school": "north-high", "namespaces": ["school-b", "school-a"]}
                }
            },
        },
    }
    docs = render(tools_bin, tmp_path, values)
    container = api_container(docs)
    env = env_of(container)
    fields = {f"ROLLCALL_API_{name.upper()}" for name in ApiSettings.model_fields}
    assert set(env) <= fields
    for name in list(os.environ):
        if name.startswith("ROLLCALL_API_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "redis://from-secret:6379/0")
    settings = ApiSettings()
    assert settings.public_url == "https://rc.example.org"
    assert settings.port == 9000 == container["ports"][0]["containerPort"]
    assert env["ROLLCALL_API_REDIS_URL"] == {
        "secretKeyRef": {"name": f"{FULL}-redis-api", "key": "url"}
    }

    # The key file the API reads is the Secret mounted at settings.keys_file.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert settings.keys_file == Path(mount["mountPath"]) / "keys.yaml"
    secret = one(docs, "Secret", f"{FULL}-api-keys")
    callers = parse_key_file(secret["stringData"]["keys.yaml"])
    (caller,) = callers.values()
    assert caller.school == "north-high" and caller.namespaces == ("school-b", "school-a")
    assert bytes.fromhex(DIGEST) in callers
    assert "rk_test-key" not in json.dumps(docs)

    service = one(docs, "Service", f"{FULL}-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_empty_key_file_is_valid_and_ingress_and_autoscaling_render(
    tools_bin: Path, tmp_path: Path
) -> None:
    docs = render(tools_bin, tmp_path)
    assert parse_key_file(one(docs, "Secret", f"{FULL}-api-keys")["stringData"]["keys.yaml"]) == {}
    assert not find(docs, "Ingress") and not find(docs, "HorizontalPodAutoscaler")

    values = {
        "api": {
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "rc.example.org", "paths": [{"path": "/"}]}],
                "tls": [{"secretName": "rc-tls", "hosts": ["rc.example.org"]}],
            },
        }
    }
    docs = render(tools_bin, tmp_path, values)
    assert "replicas" not in one(docs, "Deployment", f"{FULL}-api")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULL}-api"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULL}-api", "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"


# --- RBAC -----------------------------------------------------------------------------------------


def rules_of(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [r for d in find(docs, kind, name) for r in d["rules"]]


def test_no_rule_uses_wildcards_or_escalating_verbs(tools_bin: Path, tmp_path: Path) -> None:
    for values in (
        {},
        {"operator": {"clusterWide": True, "replicas": 2}},
    ):
        docs = render(tools_bin, tmp_path, values)
        for d in find(docs, "Role") + find(docs, "ClusterRole"):
            for rule in d["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], (d["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_api_may_only_handle_recognitionjobs_in_the_school_namespaces(
    tools_bin: Path, tmp_path: Path
) -> None:
    docs = render(tools_bin, tmp_path, {"namespaces": ["school-a", "school-b"]})
    roles = find(docs, "Role", f"{FULL}-api")
    assert {r["metadata"]["namespace"] for r in roles} == {"school-a", "school-b"}
    for role in roles:
        assert role["rules"] == [
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "verbs": ["create", "get", "list", "watch", "delete"],
            },
            # erase records: create-only, so the API cannot read other Events of the school
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ]
    bindings = find(docs, "RoleBinding", f"{FULL}-api")
    assert {b["metadata"]["namespace"] for b in bindings} == {"school-a", "school-b"}
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-api", "namespace": NS}]
    # Nothing cluster-wide is bound to the API.
    for binding in find(docs, "ClusterRoleBinding"):
        assert all(s["name"] != f"{FULL}-api" for s in binding["subjects"])


def test_operator_rules_are_what_its_code_calls(tools_bin: Path, tmp_path: Path) -> None:
    docs = render(tools_bin, tmp_path, {"namespaces": ["school-a"]})
    rules = {
        (g, res): set(r["verbs"])
        for r in rules_of(docs, "Role", f"{FULL}-operator")
        for g in r["apiGroups"]
        for res in r["resources"]
    }
    assert rules == {
        (GROUP, PLURAL): {"get", "list", "watch", "patch"},
        (GROUP, f"{PLURAL}/status"): {"get", "patch"},
        (GROUP, f"{PLURAL}/finalizers"): {"update"},
        ("batch", "jobs"): {"get", "list", "watch", "create", "patch"},
        ("", "pods"): {"get", "list", "watch", "delete"},  # the pod watch; stranded pods
        ("", "pods/status"): {"patch"},  # a pod stranded on an unreachable node marked Failed
        ("", "events"): {"create"},
        ("", "secrets"): {"get"},
        ("kueue.x-k8s.io", "workloads"): {"list"},
    }
    secrets = next(
        r for r in rules_of(docs, "Role", f"{FULL}-operator") if r["resources"] == ["secrets"]
    )
    assert secrets["resourceNames"] == [f"{FULL}-webhook"]
    framework = rules_of(docs, "ClusterRole", f"{FULL}-operator-framework")
    assert {(r["apiGroups"][0], r["resources"][0]): tuple(r["verbs"]) for r in framework} == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch"),
        ("", "namespaces"): ("list", "watch"),
        ("", "nodes"): ("get",),  # is a stranded pod's node unreachable?
    }

    no_webhook = render(tools_bin, tmp_path, {"webhook": {"enabled": False}})
    assert all(
        r["resources"] != ["secrets"] for r in rules_of(no_webhook, "Role", f"{FULL}-operator")
    )
    assert not [s for s in find(no_webhook, "Secret") if "webhook" in s["metadata"]["name"]]


# --- Secrets, Redis, NetworkPolicies ---------------------------------------------------------------


def test_each_school_gets_its_own_redis_user_url_of_the_bundled_redis(
    tools_bin: Path, tmp_path: Path
) -> None:
    """Per-user URLs (tests/test_chart_redis.py runs them against redis-server with the ACL)."""
    docs = render(tools_bin, tmp_path, {"namespaces": ["school-a", "school-b"]})
    urls = {
        s["metadata"]["namespace"]: s["stringData"]["url"]
        for s in find(docs, "Secret", f"{FULL}-redis-url")
    }
    assert set(urls) == {"school-a", "school-b"}
    assert len(set(urls.values())) == 2
    password = one(docs, "Secret", f"{FULL}-redis")["stringData"]["password"]
    assert len(password) == 32
    for ns, url in urls.items():
        assert re.fullmatch(
            rf"redis://rollcall-job-{ns}:[0-9a-f]{{64}}@{FULL}-redis\.{NS}\.svc:6379/0", url
        )
    statefulset = one(docs, "StatefulSet", f"{FULL}-redis")
    redis = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert password not in json.dumps(redis)  # from the mounted Secret, never inline
    assert "env" not in redis
    webhook = {
        s["metadata"]["namespace"]: s["stringData"]["secret"]
        for s in find(docs, "Secret", f"{FULL}-webhook")
    }
    # each school its own signing key: one school cannot forge another's callbacks
    assert set(webhook) == {"school-a", "school-b"} and len(set(webhook.values())) == 2


def test_external_redis_replaces_the_bundled_one(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "rediss://:pw@redis.example.org:6380/2"
    peers = [{"ipBlock": {"cidr": "10.1.2.0/24"}}]
    values = {
        "redis": {"enabled": False, "external": {"url": url, "port": 6380, "egressTo": peers}}
    }
    docs = render(tools_bin, tmp_path, values)
    assert not find(docs, "StatefulSet") and not find(docs, "Secret", f"{FULL}-redis")
    assert one(docs, "Secret", f"{FULL}-redis-url")["stringData"]["url"] == url
    egress = one(docs, "NetworkPolicy", f"{FULL}-job")["spec"]["egress"]
    assert egress[1] == {"to": peers, "ports": [{"protocol": "TCP", "port": 6380}]}

    values = {
        "redis": {
            "enabled": False,
            "external": {"existingSecret": "school-redis", "existingSecretKey": "uri"},
        }
    }
    docs = render(tools_bin, tmp_path, values)
    assert not [s for s in find(docs, "Secret") if "redis" in s["metadata"]["name"]]
    settings = operator_settings(docs, monkeypatch)
    assert (settings.redis_secret_name, settings.redis_secret_key) == ("school-redis", "uri")


def test_job_pods_reach_only_dns_and_redis(tools_bin: Path, tmp_path: Path) -> None:
    docs = render(tools_bin, tmp_path, {"namespaces": ["school-a", "school-b"]})
    policies = find(docs, "NetworkPolicy", f"{FULL}-job")
    assert {p["metadata"]["namespace"] for p in policies} == {"school-a", "school-b"}

    # The selector matches the labels the operator's Job builder puts on job pods.
    rj = {
        "metadata": {"name": "x", "namespace": "school-a", "uid": "u"},
        "spec": {"classCode": "C", "images": {"claimName": "p"}, "roster": ["s1"]},
    }
    job_pod_labels = build_job(rj, OperatorSettings())["spec"]["template"]["metadata"]["labels"]
    redis_labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"].items() <= job_pod_labels.items()
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["ingress"] == []
        dns, redis = spec["egress"]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert redis["ports"] == [{"protocol": "TCP", "port": 6379}]
        (peer,) = redis["to"]
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NS}
        assert peer["podSelector"]["matchLabels"].items() <= redis_labels.items()

    # Redis accepts the operator, the API and the schools' job pods, on 6379 only.
    redis_policy = one(docs, "NetworkPolicy", f"{FULL}-redis")["spec"]
    (rule,) = redis_policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    operator_peer, api_peer, job_peer = rule["from"]
    assert operator_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert api_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert job_peer["podSelector"]["matchLabels"].items() <= job_pod_labels.items()
    # job pods of the configured school namespaces only, not of any namespace
    assert job_peer["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["school-a", "school-b"]}
    ]
    api_policy = one(docs, "NetworkPolicy", f"{FULL}-api")["spec"]
    assert api_policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]

    assert not find(
        render(tools_bin, tmp_path, {"networkPolicy": {"enabled": False}}), "NetworkPolicy"
    )


def test_helm_test_hook_asks_the_api_readyz(default_docs: list[dict[str, Any]]) -> None:
    pod = one(default_docs, "Pod", f"{FULL}-test-readyz")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["args"][-1] == f"http://{FULL}-api.{NS}.svc:80/readyz"
    assert container["image"] == "ghcr.io/rollcall/rollcall-api:0.1.0"


def test_names_fit_kubernetes_limits_with_a_long_release_name(
    tools_bin: Path, tmp_path: Path
) -> None:
    docs = render(tools_bin, tmp_path, {"operator": {"replicas": 2}}, release="r" * 53)
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]


def test_restricting_api_ingress_still_lets_the_helm_test_pod_in(
    tools_bin: Path, tmp_path: Path
) -> None:
    controller = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    docs = render(tools_bin, tmp_path, {"networkPolicy": {"apiIngressFrom": [controller]}})
    (rule,) = one(docs, "NetworkPolicy", f"{FULL}-api")["spec"]["ingress"]
    test_pod_labels = one(docs, "Pod", f"{FULL}-test-readyz")["metadata"]["labels"]
    assert rule["from"][0] == controller
    assert rule["from"][1]["podSelector"]["matchLabels"].items() <= test_pod_labels.items()


def test_created_school_namespaces_enforce_restricted_and_survive_uninstall(
    tools_bin: Path, tmp_path: Path
) -> None:
    values = {"namespaces": ["school-a", NS], "createNamespaces": True}
    docs = render(tools_bin, tmp_path, values)
    (created,) = find(docs, "Namespace")  # never the release namespace itself
    assert created["metadata"]["name"] == "school-a"
    assert created["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert created["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not find(render(tools_bin, tmp_path, {"namespaces": ["school-a"]}), "Namespace")
