"""The batch/v1 Job for one RecognitionJob: a pure function of the RJ and the operator settings.

Nothing here talks to a server, so every field is unit-tested (tests/test_job_builder.py). The
dict reads like the YAML it becomes. The Job's name is derived from the RJ's name only, so a create
that is repeated (operator restart, concurrent handler) hits AlreadyExists instead of making a twin.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rollcall_contract import keys, labels, redistls
from rollcall_contract.jobenv import (
    INPUT_MOUNT,
    OUTPUT_MOUNT,
    REDIS_URL_ENV,
    TERMINATION_LOG,
    ExitCode,
    JobEnv,
    job_env,
)
from rollcall_contract.labels import label_value
from rollcall_contract.model import API_VERSION, KIND, RecognitionJobSpec, parse_spec
from rollcall_operator.settings import OperatorSettings

MANAGED_BY = labels.MANAGER_OPERATOR
LABEL_MANAGED_BY = labels.MANAGED_BY
# Selects every Job (and pod) this operator made, for watches and for re-counting after a restart.
MANAGED_SELECTOR = {LABEL_MANAGED_BY: MANAGED_BY}

# How long a job pod being deleted (suspend, preemption, drain, node loss) may take to stop before
# SIGKILL. The job installs no SIGTERM handler today and runs as PID 1, where the kernel drops a
# signal without one, so the grace is spent holding the GPU; SIGKILL is safe at any point, since
# results reach their key only by one atomic RENAME from staging (rollcall_contract.keys), and a
# handler would need only to write its termination message (termination.py: <= 4 KiB). The
# default 30 s kept a preempted GPU idle that long and delayed a lost node's retry as much.
TERMINATION_GRACE_SECONDS = 5

# A CPU job (spec.resources.gpus: 0) is told this: the job image is an nvidia/cuda image whose ENV
# says NVIDIA_VISIBLE_DEVICES=all, so on a GPU node whose default runtime is nvidia's (the GPU
# Operator's default) a pod that requested no GPU was handed all of them, beside other schools'
# jobs, and the job's providers (CUDA first) used one. "void" is runc's behaviour: no device, no
# driver. A GPU job's value comes from the device plugin, for the GPUs it was granted.
GPU_VISIBILITY_ENV = "NVIDIA_VISIBLE_DEVICES"
NO_GPU = "void"

# RJ annotations the passthrough never copies onto the pod, whatever prefixes the settings allow:
# the kubelet, container runtimes, CNI plugins and Kueue act on these (AppArmor, seccomp, CDI device
# injection, bandwidth, extra networks, user namespaces, topology), with their subdomains; rollcall's
# own rollcall.io/ (a subdomain of it, e.g. the tests' test.rollcall.io/, is the admin's to allow).
_RESERVED_ANNOTATION_DOMAINS = ("kubernetes.io", "k8s.io", "x-k8s.io", "cni.cncf.io")
_OWN_ANNOTATION_DOMAIN = labels.ANNOTATION_RJ.partition("/")[0]
_RESERVED_ANNOTATION_NAMES = ("io.kubernetes.", "io.containerd.", "io.katacontainers.")

_MAX_NAME = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HASH_LEN = 8


def job_name(rj_name: str) -> str:
    """The Job's name: the RJ's name when it is a DNS label, else a shortened form plus a hash.

    Jobs need a DNS label (≤63) because the name becomes the pods' ``job-name`` label; RJ names may
    be 253-character subdomains. The hash of the full name keeps distinct RJs distinct.
    """
    if len(rj_name) <= _MAX_NAME and _DNS_LABEL.fullmatch(rj_name):
        return rj_name
    digest = hashlib.sha256(rj_name.encode()).hexdigest()[:_HASH_LEN]
    stem = re.sub(r"[^a-z0-9-]", "-", rj_name.lower())[: _MAX_NAME - _HASH_LEN - 1].strip("-")
    return f"{stem}-{digest}" if stem else f"rj-{digest}"


def result_key(namespace: str, rj_uid: str) -> str:
    """Where the RJ's job publishes its results: under the RJ's own namespace (its school)."""
    return keys.job_results(namespace, rj_uid)


def build_labels(rj_name: str, rj_uid: str, spec: RecognitionJobSpec) -> dict[str, str]:
    return {
        labels.NAME: "rollcall-job",
        labels.INSTANCE: label_value(rj_name),
        labels.COMPONENT: "recognition",
        labels.PART_OF_LABEL: labels.PART_OF,
        labels.MANAGED_BY: MANAGED_BY,
        labels.RJ_NAME: label_value(rj_name),
        labels.RJ_UID: rj_uid,
        labels.CLASS: label_value(spec.class_code),
        labels.MODE: spec.mode.value,
    }


# spec.model's default (the CRD's and the job's): the job image's built-in model dir.
BUILTIN_MODEL = "default"


def job_model(spec: RecognitionJobSpec, settings: OperatorSettings) -> str:
    """The card the job runs: the RJ's own, or for ``default`` the cluster's (``default_model``).

    Decided here, not in the job, so the Job's ROLLCALL_MODEL says which card (and so which
    galleries) it used; the results carry the card's id too (summary.model).
    """
    if spec.model in ("", BUILTIN_MODEL) and settings.default_model:
        return settings.default_model
    return spec.model


def owner_reference(rj: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the RJ the Job's controller: deleting the RJ garbage-collects the Job and its pods."""
    meta = rj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def submitted_at(meta: Mapping[str, Any]) -> datetime | None:
    """The RJ's ``creationTimestamp`` (RFC 3339, set by the apiserver): the job counts an erase
    stamped after it as made while it ran. None for a body without one (never stored) or with
    one the apiserver would not write."""
    stamp = meta.get("creationTimestamp")
    if not stamp:
        return None
    try:
        when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
    except ValueError:  # not the apiserver's: the job keeps its first read as the bound
        return None
    return when if when.tzinfo is not None else None


def _security_contexts(settings: OperatorSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts that pass the `restricted` Pod Security Standard."""
    pod: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if settings.fs_group is not None:
        pod["fsGroup"] = settings.fs_group
    container = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return pod, container


def _container(
    rj: Mapping[str, Any], spec: RecognitionJobSpec, settings: OperatorSettings, name: str
) -> dict[str, Any]:
    meta = rj["metadata"]
    annotate = spec.output.annotate
    ca_file = redistls.CA_MOUNT / redistls.CA_KEY if settings.job_redis_ca_configmap else None
    settings_for_job = JobEnv(
        job_namespace=meta["namespace"],
        job_name=name,
        job_uid=meta["uid"],
        mode=spec.mode.value,
        class_code=spec.class_code,
        gallery=spec.gallery_name,
        roster=list(spec.roster),
        threshold=spec.matching.threshold,
        margin=spec.matching.margin,
        top_k=spec.matching.top_k,
        model=job_model(spec, settings),
        input_dir=INPUT_MOUNT,
        # Said explicitly (it is also the default) so a runtime that maps the pod's
        # terminationMessagePath elsewhere, like the local node agent, can rewrite it.
        termination_log=TERMINATION_LOG,
        result_ttl_seconds=spec.output.ttl_seconds,
        annotate=annotate,
        output_dir=OUTPUT_MOUNT if annotate else None,
        redis_ca_file=ca_file,
        submitted_at=submitted_at(meta),
    )
    env = job_env(settings_for_job, extra=settings.extra_env)
    env.append(
        {
            "name": REDIS_URL_ENV,
            "valueFrom": {
                "secretKeyRef": {
                    "name": settings.redis_secret_name,
                    "key": settings.redis_secret_key,
                }
            },
        }
    )
    if not spec.resources.gpus:
        env.append({"name": GPU_VISIBILITY_ENV, "value": NO_GPU})
    limits: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.gpus:
        limits[settings.gpu_resource] = str(spec.resources.gpus)
    input_mount: dict[str, Any] = {"name": "input", "mountPath": INPUT_MOUNT, "readOnly": True}
    if spec.images.sub_path:
        input_mount["subPath"] = spec.images.sub_path
    mounts = [input_mount, {"name": "tmp", "mountPath": "/tmp"}]
    if settings.job_redis_ca_configmap:
        mounts.append({"name": "redis-ca", "mountPath": str(redistls.CA_MOUNT), "readOnly": True})
    if spec.output.annotate:
        output_mount: dict[str, Any] = {"name": "output", "mountPath": OUTPUT_MOUNT}
        if spec.output.claim_name and spec.output.sub_path:
            output_mount["subPath"] = spec.output.sub_path
        mounts.append(output_mount)
    _, security = _security_contexts(settings)
    container: dict[str, Any] = {
        "name": settings.container_name,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": env,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": mounts,
        "securityContext": security,
        "terminationMessagePath": TERMINATION_LOG,
        # The summary is written to the termination log; a crash before that leaves the log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.command is not None:
        container["command"] = list(settings.command)
    if settings.args is not None:
        container["args"] = list(settings.args)
    return container


def _reserved_annotation(key: str) -> bool:
    domain, slash, _ = key.lower().rpartition("/")
    if not slash:
        return key.lower().startswith(_RESERVED_ANNOTATION_NAMES)
    return domain == _OWN_ANNOTATION_DOMAIN or any(
        domain == d or domain.endswith("." + d) for d in _RESERVED_ANNOTATION_DOMAINS
    )


def _pod_annotations(rj: Mapping[str, Any], settings: OperatorSettings) -> dict[str, str]:
    """The settings' pod annotations, then the RJ's own under a passthrough prefix: never one of
    the settings' keys (the admin's value stands) nor a reserved one (see above)."""
    annotations = dict(settings.pod_annotations)
    for key, value in (rj["metadata"].get("annotations") or {}).items():
        if (
            key not in annotations
            and any(key.startswith(p) for p in settings.annotation_passthrough_prefixes)
            and not _reserved_annotation(key)
        ):
            annotations[key] = value
    return annotations


NODE_LOST_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _node_lost_tolerations(
    settings: OperatorSettings, configured: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Bounded NoExecute tolerations of a lost node, so attendance is retried elsewhere soon.

    Without them the apiserver adds 300 s ones; a toleration the cluster's settings already give
    for either taint is kept as it is.
    """
    seconds = settings.node_lost_toleration_seconds
    if seconds is None:
        return []
    given = {t.get("key") for t in configured}
    return [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        for key in NODE_LOST_TAINTS
        if key not in given
    ]


def build_job(
    rj: Mapping[str, Any], settings: OperatorSettings, spec: RecognitionJobSpec | None = None
) -> dict[str, Any]:
    """The batch/v1 Job manifest for the RJ ``rj`` (a body as read from the apiserver).

    ``spec``: ``rj``'s spec as already parsed (the operator's cache holds it), so a burst does
    not validate every spec twice; parsed here when not given.
    """
    meta = rj["metadata"]
    spec = spec if spec is not None else parse_spec(rj["spec"])
    name = job_name(meta["name"])
    pod_labels = build_labels(meta["name"], meta["uid"], spec)
    job_labels = dict(pod_labels)
    # The card, for the fold to copy into status.model with jobName (no write of its own). Card
    # ids are DNS labels, so always valid label values; an invalid one would only go unlabelled.
    model = job_model(spec, settings)
    if labels.is_label_value(model):
        job_labels[labels.MODEL] = model
    if spec.queue:
        job_labels[labels.KUEUE_QUEUE] = spec.queue
    gpu = spec.resources.gpus > 0
    pod_security, _ = _security_contexts(settings)
    volumes: list[dict[str, Any]] = [
        {
            "name": "input",
            "persistentVolumeClaim": {"claimName": spec.images.claim_name, "readOnly": True},
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
    ]
    if settings.job_redis_ca_configmap:
        items = [{"key": redistls.CA_KEY, "path": redistls.CA_KEY}]
        volumes.append(
            {
                "name": "redis-ca",
                "configMap": {"name": settings.job_redis_ca_configmap, "items": items},
            }
        )
    if spec.output.annotate and spec.output.claim_name:
        volumes.append(
            {"name": "output", "persistentVolumeClaim": {"claimName": spec.output.claim_name}}
        )
    elif spec.output.annotate:
        volumes.append({"name": "output", "emptyDir": {"sizeLimit": settings.output_size_limit}})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [_container(rj, spec, settings, name)],
        "volumes": volumes,
    }
    node_selector = {**settings.node_selector, **(settings.gpu_node_selector if gpu else {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [*settings.tolerations, *(settings.gpu_tolerations if gpu else [])]
    tolerations += _node_lost_tolerations(settings, tolerations)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if settings.runtime_class_name and gpu:
        pod_spec["runtimeClassName"] = settings.runtime_class_name
    if settings.priority_class_name:
        pod_spec["priorityClassName"] = settings.priority_class_name
    if settings.service_account_name:
        pod_spec["serviceAccountName"] = settings.service_account_name
    policy = spec.run_policy
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": job_labels,
            "annotations": {labels.ANNOTATION_RJ: f"{meta['namespace']}/{meta['name']}"},
            "ownerReferences": [owner_reference(rj)],
        },
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": policy.backoff_limit,
            "activeDeadlineSeconds": policy.active_deadline_seconds,
            "ttlSecondsAfterFinished": policy.ttl_seconds_after_finished,
            # Kueue admits a queued Job by un-suspending it; the user's suspend wins otherwise.
            "suspend": policy.suspend or spec.queue is not None,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": settings.container_name,
                            "operator": "In",
                            "values": [int(ExitCode.BAD_INPUT)],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": _pod_annotations(rj, settings)},
                "spec": pod_spec,
            },
        },
    }
