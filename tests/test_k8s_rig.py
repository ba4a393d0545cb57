"""The test rig is a real control plane: behaviour a mock of the Kubernetes API would not show."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localk8s import ControlPlane, wait_for
from nodeagent import NodeAgent, Outcome, ScriptedRunner

RESTRICTED_CONTAINER: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def node_of(pod: client.V1Pod) -> str | None:
    """The node a pod is bound to (None while pending)."""
    assert pod.spec is not None  # the apiserver always returns a pod's spec
    return pod.spec.node_name


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    """How the pod's first container ended."""
    assert pod.status is not None and pod.status.container_statuses
    state = pod.status.container_statuses[0].state
    assert state is not None and state.terminated is not None
    return state.terminated


def widget_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10}
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_schema_rejects_invalid_objects_and_serves_status(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    group = f"rig{uuid.uuid4().hex[:6]}.rollcall.io"
    ext = client.ApiextensionsV1Api(k8s_api)
    ext.create_custom_resource_definition(
        client.V1CustomResourceDefinition.model_validate(widget_crd(group))
    )
    crd_name = f"widgets.{group}"

    def established() -> bool:
        status = ext.read_custom_resource_definition(crd_name).status
        assert status is not None  # the apiserver always reports a CRD's status
        return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

    wait_for(established, "CRD established")
    custom = client.CustomObjectsApi(k8s_api)

    def create(size: object) -> dict[str, Any]:
        body = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": f"w{uuid.uuid4().hex[:6]}"},
            "spec": {"size": size},
        }
        # A custom object is untyped JSON.
        return cast(
            dict[str, Any],
            custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", body),
        )

    with pytest.raises(ApiException) as err:
        create(99)
    assert err.value.status == 422
    assert "spec.size" in str(err.value.body) and "less than or equal to 10" in str(err.value.body)

    obj = create(3)
    name = obj["metadata"]["name"]
    # The status subresource: status only changes through /status, spec writes ignore it.
    custom.patch_namespaced_custom_object_status(
        group, "v1", namespace, "widgets", name, {"status": {"phase": "Ready"}}
    )
    custom.patch_namespaced_custom_object(
        group,
        "v1",
        namespace,
        "widgets",
        name,
        {"spec": {"size": 4}, "status": {"phase": "Hacked"}},
    )
    got = cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(group, "v1", namespace, "widgets", name),
    )
    assert got["spec"]["size"] == 4
    assert got["status"]["phase"] == "Ready"
    ext.delete_custom_resource_definition(crd_name)


def gpu_pod(name: str, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "nodeSelector": node_selector or {},
            "tolerations": [
                {"key": "rollcall.io/rig", "operator": "Exists", "effect": "NoSchedule"},
                # The agent-less test node never heart-beats, so it stays tainted not-ready.
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "rollcall/none",
                    "command": ["true"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    **RESTRICTED_CONTAINER,
                }
            ],
        },
    }


def test_job_controller_creates_pod_that_runs_on_the_gpu_node_and_completes(
    k8s_api: client.ApiClient, namespace: str, node_agent: NodeAgent
) -> None:
    node_agent.use(namespace, ScriptedRunner(lambda pod: Outcome(0, '{"ok": true}')))
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    job: dict[str, Any] = {
        "metadata": {"name": "rig-job"},
        "spec": {"backoffLimit": 0, "template": gpu_pod("ignored")},
    }
    del job["spec"]["template"]["metadata"]["name"]
    batch.create_namespaced_job(namespace, client.V1Job.model_validate(job))

    def pods() -> list[client.V1Pod]:
        return core.list_namespaced_pod(namespace, label_selector="job-name=rig-job").items

    def job_status() -> client.V1JobStatus:
        status = batch.read_namespaced_job_status("rig-job", namespace).status
        assert status is not None  # the apiserver always reports a Job's status
        return status

    wait_for(
        lambda: len(pods()) == 1 and node_of(pods()[0]) == node_agent.name,
        "the job's pod bound to the GPU node",
    )
    wait_for(lambda: (job_status().succeeded or 0) == 1, "job succeeded")
    conds = {c.type: c.status for c in job_status().conditions or []}
    assert conds.get("Complete") == "True"
    term = terminated(pods()[0])
    assert term.exit_code == 0 and term.message == '{"ok": true}'


def test_scheduler_keeps_second_gpu_pod_pending_when_the_only_gpu_is_taken(
    k8s_api: client.ApiClient, namespace: str, gpu_node: NodeAgent
) -> None:
    core = client.CoreV1Api(k8s_api)
    node = f"one-gpu-{uuid.uuid4().hex[:6]}"
    # A node with no agent: bound pods stay where the scheduler put them, holding the GPU.
    core.create_node(
        client.V1Node.model_validate(
            {
                "metadata": {"name": node, "labels": {"rig": node}},
                "spec": {
                    "taints": [{"key": "rollcall.io/rig", "value": "x", "effect": "NoSchedule"}]
                },
            }
        )
    )
    cap = {"cpu": "4", "memory": "8Gi", "pods": "10", "nvidia.com/gpu": "1"}
    core.patch_node_status(
        node,
        {
            "status": {
                "capacity": cap,
                "allocatable": cap,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Test", "message": ""}
                ],
            }
        },
    )
    try:
        core.create_namespaced_pod(
            namespace, client.V1Pod.model_validate(gpu_pod("first", {"rig": node}))
        )
        wait_for(
            lambda: node_of(core.read_namespaced_pod("first", namespace)) == node,
            "first bound",
        )
        core.create_namespaced_pod(
            namespace, client.V1Pod.model_validate(gpu_pod("second", {"rig": node}))
        )

        def unschedulable() -> bool:
            pod = core.read_namespaced_pod("second", namespace)
            assert pod.status is not None  # the apiserver always reports a pod's status
            return any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in pod.status.conditions or []
            )

        wait_for(unschedulable, "second pod reported Unschedulable")
        second = core.read_namespaced_pod("second", namespace)
        assert node_of(second) is None
        assert second.status is not None and second.status.conditions is not None
        message = next(c.message for c in second.status.conditions if c.type == "PodScheduled")
        assert message is not None and "nvidia.com/gpu" in message
    finally:
        core.delete_node(node)


def test_deleting_an_owner_garbage_collects_its_dependents(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap.model_validate({"metadata": {"name": "owner"}})
    )
    assert owner.metadata is not None  # the apiserver returns what it stored, metadata and all
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap.model_validate(
            {
                "metadata": {
                    "name": "dependent",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "name": "owner",
                            "uid": owner.metadata.uid,
                        }
                    ],
                }
            }
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, "the garbage collector to delete the dependent")


def test_role_grants_exactly_what_it_allows(
    k8s_api: client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role.model_validate(
            {
                "metadata": {"name": "cm-reader"},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
                ],
            }
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding.model_validate(
            {
                "metadata": {"name": "alice-reads"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "cm-reader",
                },
                "subjects": [
                    {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
                ],
            }
        ),
    )
    cfg = client.Configuration()
    cfg.host = control_plane.server
    cfg.ssl_ca_cert = str(control_plane.ca_file)
    cfg.api_key = {"authorization": f"Bearer {control_plane.user_tokens['alice']}"}
    with client.ApiClient(cfg) as alice_api:
        alice = client.CoreV1Api(alice_api)
        wait_for(
            lambda: alice.list_namespaced_config_map(namespace) is not None,
            "RBAC cache to see the binding",
        )
        for forbidden in (
            lambda: alice.list_namespaced_secret(namespace),
            lambda: alice.create_namespaced_config_map(
                namespace, client.V1ConfigMap.model_validate({"metadata": {"name": "x"}})
            ),
            lambda: alice.list_namespaced_config_map("default"),
        ):
            with pytest.raises(ApiException) as err:
                forbidden()
            assert err.value.status == 403


def test_restricted_namespace_rejects_a_pod_without_restricted_security_context(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    pod = gpu_pod("runs-as-root")
    del pod["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(namespace, client.V1Pod.model_validate(pod))
    assert err.value.status == 403
    assert "violates PodSecurity" in str(err.value.body)


def test_pod_mounting_a_local_claim_runs_as_a_process_with_the_folder_mapped(
    k8s_api: client.ApiClient,
    namespace: str,
    node_agent: NodeAgent,
    local_claim: Callable[..., Path],
) -> None:
    folder = local_claim("inbox")
    (folder / "hello.txt").write_text("from the claim")
    core = client.CoreV1Api(k8s_api)
    pod = gpu_pod("reader")
    container = pod["spec"]["containers"][0]
    # The node agent runs the command here: copy the mounted file into the termination message.
    container["command"] = ["sh", "-c", 'cat "$SRC/hello.txt" > "$MSG"']
    container["env"] = [
        {"name": "SRC", "value": "/data/in"},
        {"name": "MSG", "value": "/dev/termination-log"},
    ]
    container["volumeMounts"] = [{"name": "in", "mountPath": "/data/in", "readOnly": True}]
    pod["spec"]["volumes"] = [{"name": "in", "persistentVolumeClaim": {"claimName": "inbox"}}]
    core.create_namespaced_pod(namespace, client.V1Pod.model_validate(pod))

    def finished() -> bool:
        status = core.read_namespaced_pod("reader", namespace).status
        assert status is not None  # the apiserver always reports a pod's status
        return status.phase == "Succeeded"

    wait_for(finished, "the pod to run and succeed")
    assert terminated(core.read_namespaced_pod("reader", namespace)).message == "from the claim"
