"""The API runs with exactly the Role the chart renders for it, through the real RBAC authorizer.

That Role grants create/get/list/watch/delete on RecognitionJobs and create on Events: the flow
below (submit, read, list, follow the event stream, cancel, erase a student with its Event) works
with it, and the same identity can neither read the Events back nor touch Jobs, Pods or Secrets.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from apirig import write_key_file
from helmchart import one, render
from localk8s import ControlPlane
from rollcall_api.app import create_app
from rollcall_api.settings import Settings
from rollcall_contract import keys
from rollcall_contract.model import GROUP, PLURAL, VERSION

API_VERBS = ["create", "get", "list", "watch", "delete"]
FULL = "rc-rollcall"
BODY = {"classCode": "5C", "images": {"claimName": "photos"}, "roster": ["s-1"]}


def chart_api_rules(tools_bin: Path, tmp: Path, ns: str) -> list[dict[str, Any]]:
    """The rules of the API's Role as the chart renders it for namespace ``ns``."""
    rules: list[dict[str, Any]] = one(
        render(tools_bin, tmp, {"namespaces": [ns]}), "Role", f"{FULL}-api", ns
    )["rules"]
    return rules


def service_account_kubeconfig(
    cp: ControlPlane, api: client.ApiClient, ns: str, path: Path, rules: list[dict[str, Any]]
) -> Path:
    # Plain dicts for bodies, as the YAML reads; the typed client wants its model classes.
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "rollcall-api"}})
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "rollcall-api"},
            "rules": rules,
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "rollcall-api"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "rollcall-api",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "rollcall-api", "namespace": ns}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "rollcall-api", ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    return cp.kubeconfig_for("rollcall-api", str(token), path)


async def test_the_api_works_with_only_the_role_the_chart_grants_it(
    control_plane: ControlPlane,
    k8s_api: client.ApiClient,
    crds: list[str],
    namespace: str,
    redis_url: str,
    redis_client: redis.Redis,
    tools_bin: Path,
    tmp_path: Path,
) -> None:
    rules = chart_api_rules(tools_bin, tmp_path, namespace)
    jobs_rule = next(r for r in rules if PLURAL in r["resources"])
    assert jobs_rule["apiGroups"] == [GROUP] and sorted(jobs_rule["verbs"]) == sorted(API_VERBS)
    kubeconfig = service_account_kubeconfig(
        control_plane, k8s_api, namespace, tmp_path / "kc", rules
    )
    key = write_key_file(tmp_path / "keys.yaml", {"north": [namespace]})["north"]
    app = create_app(
        Settings(
            kubeconfig=kubeconfig,
            keys_file=tmp_path / "keys.yaml",
            redis_url=redis_url,
            keys_reload_seconds=0,
            events_poll_seconds=0.2,
        )
    )
    auth = {"Authorization": f"Bearer {key}"}
    custom = client.CustomObjectsApi(k8s_api)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        job = (await http.post("/v1/recognition-jobs", json=BODY, headers=auth)).json()
        assert job["phase"] == "Pending", job
        url = f"/v1/recognition-jobs/{job['id']}"
        assert (await http.get(url, headers=auth)).status_code == 200
        listed = (await http.get("/v1/recognition-jobs", headers=auth)).json()
        assert [j["id"] for j in listed["items"]] == [job["id"]]

        async def finish_later() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(
                custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                job["id"],
                {"status": {"phase": "Failed", "reason": "BadInput"}},
            )

        events, _ = await asyncio.gather(
            http.get(f"{url}/events", headers=auth, timeout=30), finish_later()
        )
        names = [line[7:] for line in events.text.splitlines() if line.startswith("event: ")]
        assert names == ["snapshot", "phase", "end"], events.text
        data = [
            json.loads(line[6:]) for line in events.text.splitlines() if line.startswith("data: ")
        ]
        assert data[-1]["phase"] == "Failed"

        assert (await http.delete(url, headers=auth)).status_code == 202
        gone: Any = await http.get(url, headers=auth)
        assert gone.status_code == 404

        # An erase, recorded as an Event by the API's own identity.
        gallery = keys.gallery(namespace, "5C", "toy-v1")
        redis_client.hset(gallery, "s-1", b"\0" * 12)
        erased = await http.delete("/v1/classes/5C/students/s-1", headers=auth)
        assert erased.status_code == 200 and erased.json()["eventRecorded"] is True, erased.text
        assert not redis_client.hexists(gallery, "s-1")

    # And nothing more: the same identity may not touch Jobs, Pods or Secrets.
    as_api: Any = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        for call in (
            lambda: client.BatchV1Api(as_api).list_namespaced_job(namespace),
            lambda: client.CoreV1Api(as_api).list_namespaced_pod(namespace),
            lambda: client.CoreV1Api(as_api).list_namespaced_secret(namespace),
            lambda: client.CoreV1Api(as_api).list_namespaced_event(namespace),
        ):
            with pytest.raises(ApiException) as denied:
                call()
            assert denied.value.status == 403
    finally:
        as_api.close()
