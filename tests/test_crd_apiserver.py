"""The generated CRD on the real kube-apiserver: defaults applied, valid RJs stored, bad ones
refused with a message an IT admin can act on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from rollcall_contract.model import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.k8s
_watch: Any = watch  # the kubernetes package's watch module is untyped


def manifest(name: str = "math-7b", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": name},
        "spec": {
            "classCode": "MATH-7B",
            "images": {"claimName": "photos", "subPath": "2026-11-27/p1"},
            "roster": ["s1", "s2"],
        },
    }
    body["spec"].update(spec)
    return body


def create(api: client.ApiClient, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    custom: Any = client.CustomObjectsApi(api)
    got: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    return got


def test_valid_rj_is_stored_with_defaults(
    k8s_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    stored = create(k8s_api, namespace, manifest())
    spec = stored["spec"]
    assert spec["mode"] == "identify"
    assert spec["matching"] == {"topK": 1}
    assert spec["resources"] == {"gpus": 1, "cpu": "2", "memory": "4Gi"}
    assert spec["runPolicy"] == {
        "backoffLimit": 2,
        "activeDeadlineSeconds": 3600,
        "ttlSecondsAfterFinished": 86400,
        "suspend": False,
    }
    assert spec["model"] == "default" and spec["priority"] == 0
    assert spec["output"] == {"ttlSeconds": 604800, "annotate": False}


def test_enroll_needs_no_roster(k8s_api: client.ApiClient, crds: list[str], namespace: str) -> None:
    body = manifest(mode="enroll")
    del body["spec"]["roster"]
    assert create(k8s_api, namespace, body)["spec"]["roster"] == []


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("identify without roster", {"roster": []}, "roster is required in identify mode"),
    ("repeated student id", {"roster": ["s1", "s1"]}, "Duplicate value"),
    (
        "escape the volume",
        {"images": {"claimName": "photos", "subPath": "a/../../etc"}},
        "must stay inside the volume",
    ),
    ("absolute path", {"images": {"claimName": "photos", "subPath": "/etc"}}, "subPath"),
    ("threshold out of range", {"matching": {"threshold": 7}}, "threshold"),
    ("unknown mode", {"mode": "guess"}, "Unsupported value"),
    ("class code with spaces", {"classCode": "math 7b"}, "classCode"),
    ("too many GPUs", {"resources": {"gpus": 64}}, "gpus"),
    ("deadline too short", {"runPolicy": {"activeDeadlineSeconds": 1}}, "activeDeadlineSeconds"),
    ("callback to metadata IP", {"callback": {"url": "https://169.254.169.254/x"}}, "public host"),
    ("callback with userinfo", {"callback": {"url": "https://u:p@x.example/"}}, "callback.url"),
    (
        "output claim without annotate",
        {"output": {"claimName": "reviews"}},
        "set output.annotate: true",
    ),
    (
        "output escapes its volume",
        {"output": {"annotate": True, "claimName": "reviews", "subPath": "../x"}},
        "output.subPath must stay inside the volume",
    ),
]


@pytest.mark.parametrize(("patch", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_rj_is_rejected_with_a_clear_message(
    k8s_api: client.ApiClient, crds: list[str], namespace: str, patch: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ApiException) as err:
        create(k8s_api, namespace, manifest(**patch))
    assert err.value.status == 422
    assert needle in str(err.value.body), err.value.body


def test_missing_class_code_is_rejected(
    k8s_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    body = manifest()
    del body["spec"]["classCode"]
    with pytest.raises(ApiException) as err:
        create(k8s_api, namespace, body)
    assert "spec.classCode: Required value" in str(err.value.body)


def test_spec_is_immutable_except_suspend(
    k8s_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    api: Any = client.CustomObjectsApi(k8s_api)
    create(k8s_api, namespace, manifest())
    ok = api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "math-7b", {"spec": {"runPolicy": {"suspend": True}}}
    )
    assert ok["spec"]["runPolicy"]["suspend"] is True
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "math-7b", {"spec": {"roster": ["s9"]}}
        )
    assert "spec cannot change once the RecognitionJob exists" in str(err.value.body)


def test_status_is_a_subresource(
    k8s_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    api: Any = client.CustomObjectsApi(k8s_api)
    body = copy.deepcopy(manifest())
    body["status"] = {"phase": "Succeeded"}
    assert create(k8s_api, namespace, body)["status"]["phase"] == "Pending"  # the default, not ours
    patched = api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "math-7b",
        {"status": {"phase": "Running", "progress": {"done": 1, "total": 3, "text": "1/3"}}},
    )
    assert patched["status"]["phase"] == "Running"
    assert patched["status"]["attempts"] == 0  # status defaults apply too


# What the CRD's defaults make of a status nobody has written (RecognitionJobStatus's defaults).
DEFAULT_STATUS = {"phase": "Pending", "conditions": [], "attempts": 0,
                  "progress": {"done": 0, "total": 0, "text": ""}}  # fmt: skip


def test_a_new_rj_reads_as_pending_without_a_status_write(
    k8s_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    """The operator writes no status for an RJ whose Job merely exists: every read shows Pending."""
    api: Any = client.CustomObjectsApi(k8s_api)
    listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    watcher = _watch.Watch()
    stream = watcher.stream(
        api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
        resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=30,
    )  # fmt: skip
    created = create(k8s_api, namespace, manifest())
    event = next(stream)
    watcher.stop()
    got = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "math-7b")
    items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert event["type"] == "ADDED"
    for seen in (created, event["object"], got, items[0]):
        assert seen["status"] == DEFAULT_STATUS
        assert seen["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    # the first real write moves it on; a finished phase stays final against the defaults too
    for phase in ("Running", "Succeeded"):
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "math-7b", {"status": {"phase": phase}}
        )
    for status in ({"phase": "Pending"}, None):  # None: the status emptied, i.e. the defaults
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, "math-7b", {"status": status}
            )
        assert err.value.status == 422 and "phase is final" in str(err.value.body)
