"""Audit of RJ -> Job: nothing a school writes (spec, name, labels, annotations) widens its pod.

A school controls its RecognitionJob's spec and metadata; the admin controls the operator's
settings. The pure builder and the model are checked table by table; the CRD schema's refusal of a
roster too big for the job's environment is checked on the real kube-apiserver (conftest).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from rollcall_contract import labels
from rollcall_contract.jobenv import INPUT_MOUNT, REDIS_URL_ENV, JobSettings
from rollcall_contract.model import (
    GROUP,
    IDENT_MAX_LENGTH,
    MAX_ROSTER,
    MAX_ROSTER_CHARS,
    PLURAL,
    VERSION,
    parse_spec,
)
from rollcall_operator.builder import build_job
from rollcall_operator.quantities import JobBounds, over_bounds
from rollcall_operator.settings import OperatorSettings
from test_job_builder import container
from test_job_builder import pod as pod_spec

UID = "0b5c8a3e-1111-4222-8333-444455556666"
S = OperatorSettings()


def rj(
    name: str = "math-7b",
    namespace: str = "school-a",
    meta: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, **(meta or {})},
        "spec": {
            "classCode": "MATH-7B",
            "images": {"claimName": "photos", "subPath": "2026-11-27/p1"},
            "roster": ["s1", "s2"],
        },
    }
    body["spec"].update(spec)
    return body


def plain_env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(job)["env"] if "value" in e}


def refused(spec: dict[str, Any]) -> str:
    """The model's message for an invalid spec (fails the test when it is accepted)."""
    with pytest.raises(ValidationError) as info:
        parse_spec(spec)
    return str(info.value)


BASE_SPEC: dict[str, Any] = rj()["spec"]


# --- the pod's privileges: the same whatever the spec ---------------------------------------

SPEC_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    ("cpu only", {"resources": {"gpus": 0}}),
    ("8 gpus", {"resources": {"gpus": 8, "cpu": "64", "memory": "512Gi"}}),
    ("enroll", {"mode": "enroll", "roster": []}),
    ("annotate to scratch", {"output": {"annotate": True}}),
    ("annotate to claim", {"output": {"annotate": True, "claimName": "out", "subPath": "x"}}),
    ("queued", {"queue": "school-a-queue", "priority": 1000}),
    ("suspended", {"runPolicy": {"suspend": True}}),
]
ANY_META: dict[str, Any] = {
    "labels": {
        labels.MANAGED_BY: "someone-else",
        labels.RJ_UID: "other-uid",
        labels.CLASS: "OTHER",
        "kueue.x-k8s.io/queue-name": "other",
        "kueue.x-k8s.io/priority-class": "top",
    },
    "annotations": {
        "container.apparmor.security.beta.kubernetes.io/recognize": "unconfined",
        "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
        "sidecar.istio.io/inject": "true",
        labels.ANNOTATION_RJ: "other-school/their-rj",
    },
}


@pytest.mark.parametrize(("spec", "meta"), [
    pytest.param(s, m, id=f"{what}-{'meta' if m else 'plain'}")
    for what, s in SPEC_VARIANTS for m in ({}, ANY_META)
])  # fmt: skip
def test_pod_is_restricted_whatever_the_spec_and_metadata(
    spec: dict[str, Any], meta: dict[str, Any]
) -> None:
    job = build_job(rj(meta=meta, **spec), S)
    pod = pod_spec(job)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(job)["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    for field in ("hostNetwork", "hostPID", "hostIPC", "hostUsers", "shareProcessNamespace"):
        assert field not in pod
    assert "serviceAccountName" not in pod and "priorityClassName" not in pod
    assert len(pod["containers"]) == 1 and "initContainers" not in pod
    assert container(job)["image"] == S.image and "command" not in container(job)
    # volumes: the RJ's own claims (its namespace's), scratch, nothing of the node's
    for volume in pod["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= {"persistentVolumeClaim", "emptyDir", "configMap"}, volume
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["input"] == {"claimName": "photos", "readOnly": True}
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert mounts["input"]["readOnly"] is True and mounts["input"]["mountPath"] == INPUT_MOUNT
    assert set(claims) <= {"input", "output"}
    # the RJ's labels reach neither the Job nor the pod; rollcall's own are rollcall's
    for got in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert got[labels.MANAGED_BY] == "rollcall-operator" and got[labels.RJ_UID] == UID
        assert "kueue.x-k8s.io/priority-class" not in got
        assert got.get(labels.KUEUE_QUEUE) in (None, spec.get("queue"))
    assert job["metadata"]["annotations"] == {labels.ANNOTATION_RJ: "school-a/math-7b"}
    # no passthrough configured: no RJ annotation reaches the pod
    assert job["spec"]["template"]["metadata"]["annotations"] == {}
    # requests == limits (Guaranteed QoS), both always set
    resources = container(job)["resources"]
    assert resources["requests"] == resources["limits"]
    assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize(
    "extra",
    [
        {"image": "evil:latest"},
        {"env": [{"name": "ROLLCALL_REDIS_URL", "value": "redis://other"}]},
        {"securityContext": {"privileged": True}},
        {"hostNetwork": True},
        {"nodeSelector": {"kubernetes.io/hostname": "gpu-1"}},
        {"tolerations": [{"operator": "Exists"}]},
        {"priorityClassName": "system-node-critical"},
        {"serviceAccountName": "operator"},
        {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]},
        {"namespace": "school-b"},
        {"modelDir": "/etc"},
        {"redisUrl": "redis://other"},
        {"resources": {"gpus": 1, "limits": {"nvidia.com/gpu": 8}}},
        {"images": {"claimName": "photos", "readOnly": False}},
        {"output": {"annotate": True, "emptyDir": {}}},
    ],
    ids=lambda e: next(iter(e)),
)
def test_unknown_spec_fields_are_refused(extra: dict[str, Any]) -> None:
    """extra='forbid' in the model, and the CRD schema is structural (no unknown fields kept)."""
    refused({**BASE_SPEC, **extra})


# --- subPath and claimName --------------------------------------------------------------------

SUB_PATHS_REFUSED = ["/etc", "..", "a/..", "../b", "a/../../x", "./..", "a\x00b", "x" * 1025]
SUB_PATHS_KEPT = [".", "a//b", "...", "a..b/c", "2026-11-27/p 1", "a\\..\\..", "x" * 1024]


@pytest.mark.parametrize("sub_path", SUB_PATHS_REFUSED, ids=repr)
@pytest.mark.parametrize("where", ["images", "output"])
def test_sub_paths_that_leave_the_volume_are_refused(where: str, sub_path: str) -> None:
    if where == "images":
        spec = {**BASE_SPEC, "images": {"claimName": "photos", "subPath": sub_path}}
    else:
        spec = {**BASE_SPEC, "output": {"annotate": True, "claimName": "o", "subPath": sub_path}}
    refused(spec)


@pytest.mark.parametrize("sub_path", SUB_PATHS_KEPT, ids=lambda s: repr(s[:20]))
def test_sub_paths_kubernetes_accepts_are_mounted_as_given(sub_path: str) -> None:
    """What the model keeps, the apiserver keeps too (relative, no '..' element; '\\' is a plain
    character on Linux), and the kubelet resolves it inside the volume."""
    job = build_job(rj(images={"claimName": "photos", "subPath": sub_path}), S)
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "input")
    assert mount == {
        "name": "input",
        "mountPath": INPUT_MOUNT,
        "readOnly": True,
        "subPath": sub_path,
    }


@pytest.mark.parametrize(
    "claim", ["", "Photos", "a/b", "../x", "a_b", "-a", "a" * 254, "a..b", "x\n"], ids=repr
)
def test_claim_names_must_be_dns_subdomains(claim: str) -> None:
    refused({**BASE_SPEC, "images": {"claimName": claim}})
    refused({**BASE_SPEC, "output": {"annotate": True, "claimName": claim}})


def test_output_claim_needs_annotate_and_is_the_only_writable_claim() -> None:
    refused({**BASE_SPEC, "output": {"claimName": "out"}})
    job = build_job(rj(output={"annotate": True, "claimName": "out", "subPath": "a/b"}), S)
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert mounts["output"] == {"name": "output", "mountPath": "/data/output", "subPath": "a/b"}
    scratch = build_job(rj(output={"annotate": True}), S)
    (out,) = [v for v in pod_spec(scratch)["volumes"] if v["name"] == "output"]
    assert out == {"name": "output", "emptyDir": {"sizeLimit": S.output_size_limit}}


# --- the environment: the spec fills values, never names ------------------------------------

SPEC_ENV = {
    "ROLLCALL_JOB_NAMESPACE",
    "ROLLCALL_JOB_NAME",
    "ROLLCALL_JOB_UID",
    "ROLLCALL_MODE",
    "ROLLCALL_CLASS_CODE",
    "ROLLCALL_GALLERY",
    "ROLLCALL_ROSTER",
    "ROLLCALL_THRESHOLD",
    "ROLLCALL_MARGIN",
    "ROLLCALL_TOP_K",
    "ROLLCALL_MODEL",
    "ROLLCALL_INPUT_DIR",
    "ROLLCALL_OUTPUT_DIR",
    "ROLLCALL_ANNOTATE",
    "ROLLCALL_RESULT_TTL_SECONDS",
    "ROLLCALL_TERMINATION_LOG",
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("classCode", "A=1"),
        ("classCode", "a\nROLLCALL_REDIS_URL=redis://x"),
        ("classCode", "a b"),
        ("classCode", "a" * (IDENT_MAX_LENGTH + 1)),
        ("classCode", "{a}"),
        ("gallery", "x:y"),
        ("gallery", "../other"),
        ("roster", ['s1", "s2']),
        ("roster", ["s1\n"]),
        ("roster", ["ROLLCALL_MODEL_DIR=/tmp"]),
        ("roster", ["s1", "s1"]),
        ("roster", ["s"] * (MAX_ROSTER + 1)),
        ("model", "../../etc"),
        ("model", "a/b"),
        ("model", "Default"),
        ("model", ""),
        ("queue", "Other_Queue"),
        ("mode", "admin"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_spec_values_that_could_smuggle_settings_are_refused(field: str, value: Any) -> None:
    refused({**BASE_SPEC, field: value})


def test_env_names_are_fixed_and_per_rj_settings_come_from_the_rj(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = rj(
        namespace="school-a",
        output={"annotate": True},
        matching={"threshold": 0.5, "margin": 0.1, "topK": 3},
        gallery="g1",
    )
    job = build_job(body, S)
    env = container(job)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    assert set(names) - {REDIS_URL_ENV, "ROLLCALL_SUBMITTED_AT"} <= SPEC_ENV
    got = plain_env(job)
    assert got["ROLLCALL_JOB_NAMESPACE"] == "school-a"
    assert got["ROLLCALL_JOB_UID"] == UID
    assert "ROLLCALL_MODEL_DIR" not in got and "ROLLCALL_PROVIDERS" not in got
    (redis,) = [e for e in env if e["name"] == REDIS_URL_ENV]
    assert redis == {
        "name": REDIS_URL_ENV,
        "valueFrom": {"secretKeyRef": {"name": "rollcall-redis", "key": "url"}},
    }
    # the job reads back exactly what the RJ asked for
    for key, value in got.items():
        monkeypatch.setenv(key, value)
    read = JobSettings()
    assert read.job_namespace == "school-a" and read.roster == ["s1", "s2"] and read.top_k == 3


@pytest.mark.parametrize(
    "name", ["redis_url", "job_namespace", "JOB_NAME", "job_uid", "model", "Model", "nope"]
)
def test_admin_extra_env_cannot_take_per_rj_settings(name: str) -> None:
    with pytest.raises(ValidationError):
        OperatorSettings(extra_env={name: "x"})


# --- numbers ------------------------------------------------------------------------------------

NUMBERS_REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("threshold NaN", {"matching": {"threshold": math.nan}}),
    ("threshold inf", {"matching": {"threshold": math.inf}}),
    ("threshold -inf", {"matching": {"threshold": -math.inf}}),
    ("threshold negative", {"matching": {"threshold": -1e-9}}),
    ("threshold huge", {"matching": {"threshold": 1e308}}),
    ("margin NaN", {"matching": {"margin": math.nan}}),
    ("margin negative", {"matching": {"margin": -0.5}}),
    ("margin huge", {"matching": {"margin": 4.0001}}),
    ("topK 0", {"matching": {"topK": 0}}),
    ("topK 11", {"matching": {"topK": 11}}),
    ("topK huge", {"matching": {"topK": 2**63}}),
    ("topK fraction", {"matching": {"topK": 1.5}}),
    ("gpus negative", {"resources": {"gpus": -1}}),
    ("gpus 9", {"resources": {"gpus": 9}}),
    ("cpu negative", {"resources": {"cpu": "-1"}}),
    ("cpu exponent", {"resources": {"cpu": "1e9"}}),
    ("cpu petabyte", {"resources": {"cpu": "1P"}}),
    ("memory exabyte", {"resources": {"memory": "1Ei"}}),
    ("memory empty", {"resources": {"memory": ""}}),
    ("memory spaces", {"resources": {"memory": " 1Gi"}}),
    ("memory too long", {"resources": {"memory": "1" * 33}}),
    ("priority huge", {"priority": 10**6}),
    ("backoff huge", {"runPolicy": {"backoffLimit": 11}}),
    ("deadline huge", {"runPolicy": {"activeDeadlineSeconds": 86401}}),
    ("ttl negative", {"runPolicy": {"ttlSecondsAfterFinished": -1}}),
    ("result ttl short", {"output": {"ttlSeconds": 59}}),
]


@pytest.mark.parametrize(
    "spec", [c[1] for c in NUMBERS_REFUSED], ids=[c[0] for c in NUMBERS_REFUSED]
)
def test_out_of_range_numbers_are_refused(spec: dict[str, Any]) -> None:
    refused({**BASE_SPEC, **spec})


CHART_BOUNDS = JobBounds(max_gpus=2, max_cpu="8", max_memory="32Gi")  # chart defaults


@pytest.mark.parametrize(
    ("resources", "verdict"),
    [
        ({"gpus": 2, "cpu": "8", "memory": "32Gi"}, None),
        ({"gpus": 3}, "gpus=3 exceeds"),
        ({"cpu": "8001m"}, "cpu=8001m exceeds"),
        ({"memory": "32769Mi"}, "memory=32769Mi exceeds"),
        ({"memory": "34359738369"}, "exceeds"),
        # a zero limit is no limit to the kubelet (no CFS quota, no memory.max): refused
        ({"cpu": "0"}, "must be positive"),
        ({"cpu": "0m"}, "must be positive"),
        ({"memory": "0Gi"}, "must be positive"),
        ({"memory": "0.0"}, "must be positive"),
    ],
)
def test_resources_cannot_pass_the_caps_or_drop_the_limits(
    resources: dict[str, Any], verdict: str | None
) -> None:
    spec = parse_spec({**BASE_SPEC, "resources": resources})
    why = over_bounds(spec.resources, CHART_BOUNDS)
    assert (why is None) if verdict is None else (why is not None and verdict in why), why
    job = build_job(rj(resources=resources), S, spec)
    limits = container(job)["resources"]["limits"]
    assert limits["cpu"] == spec.resources.cpu and limits["memory"] == spec.resources.memory
    assert limits.get("nvidia.com/gpu") == (
        str(spec.resources.gpus) if spec.resources.gpus else None
    )


# --- names and label values -------------------------------------------------------------------

LABEL_VALUE_OK = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


@pytest.mark.parametrize(
    ("name", "class_code"),
    [
        ("a" * 253, "C" * IDENT_MAX_LENGTH),
        ("a." * 126 + "a", "a" * 61 + "._x"),
        ("x", "a-" * 31 + "b"),
        ("0" * 63, "9"),
        ("a-" * 40 + "b", "A.B_C-D"),
    ],
)
def test_names_and_label_values_are_always_valid(name: str, class_code: str) -> None:
    job = build_job(rj(name=name, classCode=class_code), S)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    assert len(job["metadata"]["name"]) <= 63
    for value in job["spec"]["template"]["metadata"]["labels"].values():
        assert len(value) <= 63 and re.fullmatch(LABEL_VALUE_OK, value), value
    for value in job["metadata"]["labels"].values():
        assert len(value) <= 63 and re.fullmatch(LABEL_VALUE_OK, value), value


def test_jobs_stay_in_their_rj_namespace() -> None:
    """Two schools' RJs of the same name make two Jobs, each in its own namespace, each told
    its own namespace (its Redis keys); nothing in the spec names another."""
    a = build_job(rj(namespace="school-a"), S)
    b = build_job(rj(namespace="school-b"), S)
    assert a["metadata"]["name"] == b["metadata"]["name"]
    assert (a["metadata"]["namespace"], b["metadata"]["namespace"]) == ("school-a", "school-b")
    assert plain_env(a)["ROLLCALL_JOB_NAMESPACE"] == "school-a"
    assert plain_env(b)["ROLLCALL_JOB_NAMESPACE"] == "school-b"


# --- defects found by this audit ----------------------------------------------------------------


def _roster(n: int, total: int) -> list[str]:
    """``n`` distinct ids, each at most 64 characters, ``total`` characters in all."""
    base, extra = divmod(total, n)
    ids = []
    for i in range(n):
        stem = f"{i:05d}"
        ids.append(stem + "a" * (base + (1 if i < extra else 0) - len(stem)))
    assert len(set(ids)) == n and max(map(len, ids)) <= IDENT_MAX_LENGTH
    assert sum(map(len, ids)) == total
    return ids


def _execs(env: dict[str, str]) -> bool:
    """Whether a process starts with ``env`` (execve refuses one string over 128 KiB: E2BIG)."""
    true = shutil.which("true")
    assert true is not None
    try:
        subprocess.run([true], env=env, check=True)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "roster",
    [
        pytest.param(_roster(MAX_ROSTER, MAX_ROSTER * IDENT_MAX_LENGTH), id="widest"),
        pytest.param(_roster(MAX_ROSTER, MAX_ROSTER_CHARS), id="largest-allowed"),
    ],
)
def test_every_roster_the_model_accepts_starts_a_process(roster: list[str]) -> None:
    """Defect: 2000 ids of 64 characters passed the schema, but ROLLCALL_ROSTER (136 KB) is over
    Linux's 128 KiB cap on one environment string: every pod failed to exec (StartError), each
    retry too, with no word about the roster. The total is now capped, and the cap fits."""
    try:
        spec = parse_spec({**BASE_SPEC, "roster": roster})
    except ValidationError:
        return  # refused at submission, with its reason (next test)
    env = plain_env(build_job(rj(roster=roster), S, spec))
    assert json.loads(env["ROLLCALL_ROSTER"]) == roster
    assert _execs(env), f"ROLLCALL_ROSTER of {len(env['ROLLCALL_ROSTER'])} bytes cannot exec"


def test_a_roster_too_big_for_the_environment_is_refused_with_its_reason() -> None:
    message = refused({**BASE_SPEC, "roster": _roster(MAX_ROSTER, MAX_ROSTER_CHARS + 1)})
    assert "roster" in message and str(MAX_ROSTER_CHARS) in message
    refused({**BASE_SPEC, "roster": _roster(MAX_ROSTER, MAX_ROSTER * IDENT_MAX_LENGTH)})


def test_the_crd_refuses_a_roster_too_big_for_the_environment(
    k8s_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    custom: Any = client.CustomObjectsApi(k8s_api)

    def create(name: str, roster: list[str]) -> None:
        body = rj(name=name, roster=roster)
        body["metadata"] = {"name": name}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    create("fits", _roster(MAX_ROSTER, MAX_ROSTER_CHARS))
    with pytest.raises(ApiException) as info:
        create("too-big", _roster(MAX_ROSTER, MAX_ROSTER_CHARS + 1))
    body = str(info.value.body)
    assert info.value.status == 422
    assert "spec.roster" in body and f"at most {MAX_ROSTER_CHARS} characters" in body


RUNTIME_ANNOTATIONS = {
    # the kubelet, container runtimes, CNI and Kueue act on these
    "container.apparmor.security.beta.kubernetes.io/recognize": "unconfined",
    "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
    "cdi.k8s.io/gpus": "nvidia.com/gpu=all",
    "kueue.x-k8s.io/podset-required-topology": "cloud.provider.com/rack",
    "kubernetes.io/egress-bandwidth": "100G",
    "k8s.v1.cni.cncf.io/networks": "school-b/their-net",
    "io.kubernetes.cri-o.userns-mode": "auto",
    "io.containerd.cri.runtime-handler": "runc",
    "rollcall.io/recognitionjob": "school-b/theirs",
}


@pytest.mark.parametrize("key", list(RUNTIME_ANNOTATIONS))
def test_passthrough_never_copies_annotations_the_node_acts_on(key: str) -> None:
    """Defect: a passthrough prefix that covers one of these (``""``, ``"io."``, a domain the admin
    thought harmless) copied the school's value onto its pod. They are never copied now."""
    body = rj(meta={"annotations": {key: RUNTIME_ANNOTATIONS[key], "school.example/cost": "7"}})
    prefix = key.split("/")[0][:3]
    settings = OperatorSettings(annotation_passthrough_prefixes=["", prefix, key, "school."])
    got = build_job(body, settings)["spec"]["template"]["metadata"]["annotations"]
    assert got == {"school.example/cost": "7"}


def test_passthrough_still_copies_what_the_admin_allowed() -> None:
    body = rj(meta={"annotations": {"test.rollcall.io/outcome": "ok", "agent.test/x": "1"}})
    settings = OperatorSettings(annotation_passthrough_prefixes=["test.rollcall.io/", "agent."])
    got = build_job(body, settings)["spec"]["template"]["metadata"]["annotations"]
    assert got == {"test.rollcall.io/outcome": "ok", "agent.test/x": "1"}


def test_passthrough_cannot_override_the_admins_pod_annotations() -> None:
    """Defect: an RJ annotation under an allowed prefix replaced the chart's job.podAnnotations of
    the same key (e.g. a cost centre, an injection switch the admin turned off)."""
    settings = OperatorSettings(
        pod_annotations={"school.example/inject": "false"},
        annotation_passthrough_prefixes=["school.example/"],
    )
    body = rj(meta={"annotations": {"school.example/inject": "true", "school.example/x": "1"}})
    got = build_job(body, settings)["spec"]["template"]["metadata"]["annotations"]
    assert got == {"school.example/inject": "false", "school.example/x": "1"}


@pytest.mark.parametrize(("gpus", "pinned"), [(0, True), (1, False), (8, False)])
def test_a_cpu_job_sees_no_gpu(gpus: int, pinned: bool) -> None:
    """Defect: the job image is an nvidia/cuda image, whose ENV says NVIDIA_VISIBLE_DEVICES=all.
    A gpus: 0 pod on a GPU node whose default runtime is nvidia's (the GPU Operator's default)
    was handed every GPU of the node, outside any request, next to other schools' jobs, and the
    job's default providers (CUDA first) used one. A CPU job now says void (runc's behaviour);
    a GPU job's value comes from the device plugin, as before."""
    job = build_job(rj(resources={"gpus": gpus}), S)
    env = plain_env(job)
    assert env.get("NVIDIA_VISIBLE_DEVICES") == ("void" if pinned else None)
    assert ("nvidia.com/gpu" in container(job)["resources"]["limits"]) is not pinned
