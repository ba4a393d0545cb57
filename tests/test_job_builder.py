"""The Job manifest built for an RJ: every field the operator promises, table-driven, no server."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from rollcall_contract.jobenv import (
    INPUT_MOUNT,
    OUTPUT_MOUNT,
    REDIS_URL_ENV,
    ExitCode,
    JobSettings,
)
from rollcall_contract.labels import label_value
from rollcall_operator.builder import build_job, job_name
from rollcall_operator.cache import CachedRJ
from rollcall_operator.settings import OperatorSettings

UID = "0b5c8a3e-1111-4222-8333-444455556666"


def rj(name: str = "math-7b", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "rollcall.io/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": {"name": name, "namespace": "school-a", "uid": UID},
        "spec": {
            "classCode": "MATH-7B",
            "images": {"claimName": "photos", "subPath": "2026-11-27/period-1"},
            "roster": ["s1", "s2"],
        },
    }
    body["spec"].update(spec)
    return body


S = OperatorSettings()


def pod(job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = job["spec"]["template"]["spec"]
    return result


def container(job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = pod(job)["containers"][0]
    return result


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("math-7b", "math-7b"),
        ("a" * 63, "a" * 63),
        ("a" * 64, "a" * 54 + "-" + "ffe054fe"),
        ("period.1.math", None),  # dots are fine in RJ names, not in Job names: sanitised + hash
        ("x" * 253, None),
    ],
)
def test_job_name_is_deterministic_short_and_valid(name: str, expected: str | None) -> None:
    got = job_name(name)
    assert got == job_name(name)
    assert len(got) <= 63
    assert got.replace("-", "").isalnum() and got[0].isalnum() and got[-1].isalnum()
    if expected is not None:
        assert got[:54] == expected[:54]
        assert len(got) == len(expected)
    if name != got:
        assert job_name(name + "y") != got


def test_distinct_long_names_do_not_collide() -> None:
    assert job_name("a" * 70 + "1") != job_name("a" * 70 + "2")
    assert job_name("a.b") != job_name("a-b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("MATH-7B", "MATH-7B"), ("a" * 62 + "._x", "a" * 62), ("a b", "a-b")],
)
def test_label_value(value: str, expected: str) -> None:
    assert label_value(value) == expected


CASES: list[tuple[str, dict[str, Any], OperatorSettings, Any]] = [
    # (what, spec overrides, settings, check(job))
    (
        "name and namespace",
        {},
        S,
        lambda j: j["metadata"]["name"] == "math-7b" and j["metadata"]["namespace"] == "school-a",
    ),
    (
        "owner is the RJ, as controller",
        {},
        S,
        lambda j: (
            j["metadata"]["ownerReferences"]
            == [
                {
                    "apiVersion": "rollcall.io/v1alpha1",
                    "kind": "RecognitionJob",
                    "name": "math-7b",
                    "uid": UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        ),
    ),
    (
        "standard labels on Job and pod",
        {},
        S,
        lambda j: all(
            labels["app.kubernetes.io/managed-by"] == "rollcall-operator"
            and labels["app.kubernetes.io/part-of"] == "rollcall"
            and labels["app.kubernetes.io/instance"] == "math-7b"
            and labels["rollcall.io/rj-uid"] == UID
            and labels["rollcall.io/class"] == "MATH-7B"
            and labels["rollcall.io/mode"] == "identify"
            for labels in (j["metadata"]["labels"], j["spec"]["template"]["metadata"]["labels"])
        ),
    ),
    (
        "one GPU by default",
        {},
        S,
        lambda j: container(j)["resources"]["limits"]["nvidia.com/gpu"] == "1",
    ),
    (
        "GPU resource name from settings",
        {"resources": {"gpus": 2}},
        OperatorSettings(gpu_resource="amd.com/gpu"),
        lambda j: (
            container(j)["resources"]["limits"]["amd.com/gpu"] == "2"
            and "nvidia.com/gpu" not in container(j)["resources"]["limits"]
        ),
    ),
    (
        "no GPU, no GPU toleration nor runtime class",
        {"resources": {"gpus": 0}},
        OperatorSettings(runtime_class_name="nvidia"),
        lambda j: (
            "nvidia.com/gpu" not in container(j)["resources"]["limits"]
            and "nvidia.com/gpu" not in [t["key"] for t in pod(j).get("tolerations", [])]
            and "runtimeClassName" not in pod(j)
        ),
    ),
    (
        "cpu and memory requested and limited",
        {"resources": {"cpu": "3", "memory": "6Gi"}},
        S,
        lambda j: (
            container(j)["resources"]["requests"]["cpu"] == "3"
            and container(j)["resources"]["limits"]["memory"] == "6Gi"
        ),
    ),
    (
        "placement from settings",
        {},
        OperatorSettings(
            node_selector={"pool": "gpu"},
            gpu_node_selector={"gpu": "a100"},
            tolerations=[{"key": "k", "operator": "Exists"}],
            runtime_class_name="nvidia",
            priority_class_name="batch-low",
        ),
        lambda j: (
            pod(j)["nodeSelector"] == {"pool": "gpu", "gpu": "a100"}
            and pod(j)["tolerations"][0] == {"key": "k", "operator": "Exists"}
            and pod(j)["tolerations"][1]["key"] == "nvidia.com/gpu"
            and pod(j)["runtimeClassName"] == "nvidia"
            and pod(j)["priorityClassName"] == "batch-low"
        ),
    ),
    (
        "restricted security context",
        {},
        S,
        lambda j: (
            container(j)["securityContext"]
            == {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            }
            and pod(j)["securityContext"]["runAsNonRoot"] is True
            and pod(j)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        ),
    ),
    ("no service-account token", {}, S, lambda j: pod(j)["automountServiceAccountToken"] is False),
    ("a short, explicit grace", {}, S, lambda j: pod(j)["terminationGracePeriodSeconds"] == 5),
    (
        "input mounted read-only at the contract's path",
        {},
        S,
        lambda j: (
            container(j)["volumeMounts"][0]
            == {
                "name": "input",
                "mountPath": INPUT_MOUNT,
                "readOnly": True,
                "subPath": "2026-11-27/period-1",
            }
            and pod(j)["volumes"][0]
            == {"name": "input", "persistentVolumeClaim": {"claimName": "photos", "readOnly": True}}
        ),
    ),
    (
        "empty subPath mounts the whole claim",
        {"images": {"claimName": "photos"}},
        S,
        lambda j: "subPath" not in container(j)["volumeMounts"][0],
    ),
    (
        "writable /tmp only",
        {},
        S,
        lambda j: (
            {"name": "tmp", "mountPath": "/tmp"} in container(j)["volumeMounts"]
            and all(m["mountPath"] != OUTPUT_MOUNT for m in container(j)["volumeMounts"])
        ),
    ),
    (
        "annotate adds the output dir",
        {"output": {"annotate": True}},
        S,
        lambda j: (
            {"name": "output", "mountPath": OUTPUT_MOUNT} in container(j)["volumeMounts"]
            and env(j)["ROLLCALL_OUTPUT_DIR"] == OUTPUT_MOUNT
            and {"name": "output", "emptyDir": {"sizeLimit": "4Gi"}} in pod(j)["volumes"]
        ),
    ),
    (
        "annotated photos kept on an output claim",
        {"output": {"annotate": True, "claimName": "reviews", "subPath": "7b/p1"}},
        S,
        lambda j: (
            {"name": "output", "mountPath": OUTPUT_MOUNT, "subPath": "7b/p1"}
            in container(j)["volumeMounts"]
            and {"name": "output", "persistentVolumeClaim": {"claimName": "reviews"}}
            in pod(j)["volumes"]
        ),
    ),
    (
        "run policy",
        {
            "runPolicy": {
                "backoffLimit": 5,
                "activeDeadlineSeconds": 600,
                "ttlSecondsAfterFinished": 60,
            }
        },
        S,
        lambda j: (
            (
                j["spec"]["backoffLimit"],
                j["spec"]["activeDeadlineSeconds"],
                j["spec"]["ttlSecondsAfterFinished"],
            )
            == (5, 600, 60)
        ),
    ),
    (
        "restartPolicy Never, one pod",
        {},
        S,
        lambda j: pod(j)["restartPolicy"] == "Never" and j["spec"]["completions"] == 1,
    ),
    (
        "bad input fails the Job at once; disruptions do not count",
        {},
        S,
        lambda j: (
            j["spec"]["podFailurePolicy"]["rules"]
            == [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "recognize",
                        "operator": "In",
                        "values": [int(ExitCode.BAD_INPUT)],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        ),
    ),
    (
        "termination message",
        {},
        S,
        lambda j: (
            container(j)["terminationMessagePolicy"] == "FallbackToLogsOnError"
            and container(j)["terminationMessagePath"] == "/dev/termination-log"
        ),
    ),
    (
        "env contract",
        {"matching": {"threshold": 0.55, "margin": 0.12, "topK": 3}},
        S,
        lambda j: (
            env(j)["ROLLCALL_JOB_UID"] == UID
            and env(j)["ROLLCALL_JOB_NAME"] == "math-7b"
            and env(j)["ROLLCALL_CLASS_CODE"] == "MATH-7B"
            and env(j)["ROLLCALL_GALLERY"] == "MATH-7B"
            and json.loads(env(j)["ROLLCALL_ROSTER"]) == ["s1", "s2"]
            and env(j)["ROLLCALL_THRESHOLD"] == "0.55"
            and env(j)["ROLLCALL_MARGIN"] == "0.12"
            and env(j)["ROLLCALL_TOP_K"] == "3"
        ),
    ),
    (
        "Redis URL from a Secret, never a literal",
        {},
        OperatorSettings(redis_secret_name="redis-creds", redis_secret_key="u"),
        lambda j: env(j)[REDIS_URL_ENV] == {"secretKeyRef": {"name": "redis-creds", "key": "u"}},
    ),
    (
        "extra container settings",
        {},
        OperatorSettings(extra_env={"providers": '["CPUExecutionProvider"]'}),
        lambda j: env(j)["ROLLCALL_PROVIDERS"] == '["CPUExecutionProvider"]',
    ),
    (
        "not suspended by default",
        {},
        S,
        lambda j: (
            j["spec"]["suspend"] is False
            and "kueue.x-k8s.io/queue-name" not in j["metadata"]["labels"]
        ),
    ),
    (
        "suspended when the RJ says so",
        {"runPolicy": {"suspend": True}},
        S,
        lambda j: j["spec"]["suspend"] is True,
    ),
    (
        "Kueue: queue label and created suspended",
        {"queue": "gpu-queue"},
        S,
        lambda j: (
            j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
            and j["spec"]["suspend"] is True
        ),
    ),
    (
        "image and command from settings",
        {},
        OperatorSettings(image="reg/job:1", command=["python", "-m", "rollcall_job"]),
        lambda j: (
            container(j)["image"] == "reg/job:1"
            and container(j)["command"] == ["python", "-m", "rollcall_job"]
        ),
    ),
]


@pytest.mark.parametrize(
    ("spec", "settings", "check"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_build_job(spec: dict[str, Any], settings: OperatorSettings, check: Any) -> None:
    body = rj(**spec)
    job = build_job(body, settings)
    assert check(job)
    # the spec the operator's cache already parsed gives the very same manifest
    assert build_job(body, settings, CachedRJ.of(body).spec) == job


def test_annotation_passthrough() -> None:
    body = rj()
    body["metadata"]["annotations"] = {"agent.test/exit-code": "0", "other": "x"}
    job = build_job(body, OperatorSettings(annotation_passthrough_prefixes=["agent.test/"]))
    assert job["spec"]["template"]["metadata"]["annotations"] == {"agent.test/exit-code": "0"}


def test_builder_is_pure_and_deterministic() -> None:
    body = rj()
    before = copy.deepcopy(body)
    assert build_job(body, S) == build_job(body, S)
    assert body == before


def test_bad_spec_raises() -> None:
    with pytest.raises(ValueError, match="roster is required"):
        build_job(rj(roster=[]), S)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-27T08:00:05Z", "2026-11-27T08:00:05+00:00"),  # as the apiserver writes it
        ("2026-11-27T09:00:05+01:00", "2026-11-27T09:00:05+01:00"),
        (dt.datetime(2026, 11, 27, 8, 0, 5, tzinfo=dt.UTC), "2026-11-27T08:00:05+00:00"),
        (None, None),  # a body never stored: no variable, the job keeps its first read
        ("", None),
        ("yesterday", None),  # not the apiserver's: likewise
        ("2026-11-27T08:00:05", None),  # no offset: not a moment
    ],
)
def test_the_job_is_told_when_the_rj_was_submitted(
    stamp: Any, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROLLCALL_SUBMITTED_AT is the RJ's creationTimestamp: an erase stamped after it counts as
    made while the job ran (rollcall_job.recheck); the job reads it back as the same moment."""
    body = rj()
    if stamp is not None:
        body["metadata"]["creationTimestamp"] = stamp
    job = build_job(body, S)
    assert env(job).get("ROLLCALL_SUBMITTED_AT") == expected
    names = [e["name"] for e in container(job)["env"]]
    assert len(names) == len(set(names))
    for e in container(job)["env"]:  # the container's environment, as the job reads it
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    settings = JobSettings()
    want = None if expected is None else dt.datetime.fromisoformat(expected)
    assert settings.submitted_at == want


INT8 = "mobilefacenet-sirius-int8-v2"


@pytest.mark.parametrize(
    ("default_model", "spec_model", "expected"),
    [
        (None, None, "default"),  # spec.model left out: the CRD's default, the image's built-in
        (None, "default", "default"),
        (None, "dlib-resnet-v1", "dlib-resnet-v1"),
        (INT8, None, INT8),
        (INT8, "default", INT8),
        (INT8, "dlib-resnet-v1", "dlib-resnet-v1"),  # an RJ that names a card keeps it
        (INT8, "mobilefacenet-sirius-v1", "mobilefacenet-sirius-v1"),  # the float one, by its id
    ],
)
def test_the_cluster_default_model_stands_in_for_default_only(
    default_model: str | None,
    spec_model: str | None,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ROLLCALL_MODEL is the card the job runs (and so whose galleries it reads): the cluster's
    default_model for an RJ that names none, the RJ's own card otherwise. The Job's
    rollcall.io/model label says the same card, for the fold to copy into status.model."""
    body = rj() if spec_model is None else rj(model=spec_model)
    job = build_job(body, OperatorSettings(default_model=default_model))
    assert env(job)["ROLLCALL_MODEL"] == expected
    assert job["metadata"]["labels"]["rollcall.io/model"] == expected
    names = [e["name"] for e in container(job)["env"]]
    assert len(names) == len(set(names))
    for e in container(job)["env"]:  # the container's environment, as the job reads it
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    assert JobSettings().model == expected


@pytest.mark.parametrize(
    "value",
    [
        "../mobilefacenet-sirius-int8-v2",
        "..",
        ".",
        "cards/int8",
        "Int8",
        "-int8",
        " int8",
        "x" * 64,
    ],
)
def test_default_model_must_be_a_card_name(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked as spec.model is (a DNS label), so no setting points the job outside its model
    dir; refused at the operator's start-up, from the environment too, not at every job."""
    with pytest.raises(ValidationError, match="default_model"):
        OperatorSettings(default_model=value)
    monkeypatch.setenv("ROLLCALL_OPERATOR_DEFAULT_MODEL", value)
    with pytest.raises(ValidationError, match="default_model"):
        OperatorSettings()


@pytest.mark.parametrize(("text", "expected"), [("", None), (INT8, INT8), ("default", "default")])
def test_default_model_from_the_environment(
    text: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty variable is no setting (the image's built-in default), as the chart's ``""``."""
    monkeypatch.setenv("ROLLCALL_OPERATOR_DEFAULT_MODEL", text)
    assert OperatorSettings().default_model == expected
    want = expected or "default"
    assert env(build_job(rj(), OperatorSettings()))["ROLLCALL_MODEL"] == want


@pytest.mark.parametrize("name", ["model", "MODEL"])
def test_extra_env_cannot_set_the_model(name: str) -> None:
    """A job-wide ROLLCALL_MODEL would also replace the card an RJ names (and duplicate the
    variable): the cluster's choice is default_model."""
    with pytest.raises(ValidationError, match="default_model"):
        OperatorSettings(extra_env={name: INT8})
