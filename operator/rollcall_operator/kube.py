"""The operator's own apiserver client (kubernetes_asyncio), opened once at startup.

Reads return plain dicts (``_preload_content=False`` + JSON) so they look exactly like the bodies
kopf hands to handlers and like what the pure modules expect; status writes are JSON merge patches
on the status subresource carrying ``metadata.uid`` as a precondition, so a write meant for a
deleted RJ never lands on a new one that reuses its name.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast
from urllib.parse import quote

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_incrementing

from rollcall_contract.kubeclient import read_env_once
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_operator.settings import OperatorSettings

MERGE_PATCH = "application/merge-patch+json"

__all__ = ["ApiException", "Kube"]


class StaleStatus(Exception):
    """A conditional status write lost to a newer write (or the RJ was replaced): re-read."""


async def _json(resp: Any) -> Any:
    """The JSON body; a non-2xx answer raises ApiException (unread responses are not checked)."""
    return json.loads(await _ok(resp))


async def _ok(resp: Any) -> bytes:
    """The raw body, unparsed (for answers nobody reads); a non-2xx answer raises ApiException."""
    data = await resp.read()
    if not 200 <= resp.status <= 299:
        err = ApiException(status=resp.status, reason=resp.reason)
        err.body = data.decode(errors="replace")
        raise err
    return cast(bytes, data)


async def _found(call: Awaitable[Any]) -> dict[str, Any] | None:
    """The object read by ``call``, or None when the apiserver answers 404."""
    try:
        return await _json(await call)  # type: ignore[no-any-return]
    except ApiException as e:
        if e.status == 404:
            return None
        raise


_RETRY_STATUSES = {429, 500, 502, 503, 504}


def _retryable(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status in _RETRY_STATUSES


async def _retrying(call: Callable[[], Awaitable[Any]], attempts: int = 30) -> Any:
    """Retry a read the apiserver asks us to retry (429 while a CRD's storage initialises, 5xx)."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_incrementing(start=0.2, increment=0.2, max=2.0),
        reraise=True,
    ):
        with attempt:
            return await _json(await call())
    raise AssertionError("unreachable: tenacity re-raises the last error")


class Kube:
    def __init__(self, api: Any) -> None:
        self.api = api
        # Typed as Any: the stubs omit ``_content_type``/``_preload_content``, which we rely on.
        self.batch: Any = client.BatchV1Api(api)
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)

    @classmethod
    async def open(cls, settings: OperatorSettings) -> Kube:
        cfg = client.Configuration()
        path = settings.kubeconfig or os.environ.get("KUBECONFIG")
        if path:
            await config.load_kube_config(config_file=str(path), client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        cfg.connection_pool_maxsize = max(8, settings.admission_concurrency * 2)
        api = client.ApiClient(cfg)
        read_env_once(api)  # no proxy/netrc lookup in a thread per call
        return cls(api)

    async def close(self) -> None:
        await self.api.close()

    # --- Jobs and pods --------------------------------------------------------------------------
    async def create_job(self, manifest: Mapping[str, Any]) -> None:
        """Create the Job; its answer (a whole Job, ~1.5 ms of JSON to parse) is not read: the
        Job watch brings the same object to the fold."""
        path = f"/apis/batch/v1/namespaces/{quote(manifest['metadata']['namespace'])}/jobs"
        await _ok(await self._post(path, json.dumps(manifest).encode()))

    async def _post(self, path: str, data: bytes) -> Any:
        """POST JSON already encoded, on the client's own session, auth and proxy.

        The generated client re-walks the whole manifest (``sanitize_for_serialization``) and
        checks every parameter before it encodes: a burst's largest share of the create after
        the request itself (py-spy). The answer is aiohttp's response, as ``_ok`` reads it.
        """
        headers = {
            **self.api.default_headers,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        await self.api.update_params_for_auth(headers, None, ["BearerToken"])
        rest = self.api.rest_client
        extra = {"server_hostname": rest.server_hostname} if rest.server_hostname else {}
        return await rest.pool_manager.request(
            "POST", self.api.configuration.host + path, data=data, headers=headers,
            proxy=rest.proxy, proxy_headers=rest.proxy_headers, **extra,
        )  # fmt: skip

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = await self.batch.read_namespaced_job(name, namespace, _preload_content=False)
            return await _json(resp)  # type: ignore[no-any-return]
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def patch_job(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        resp = await self.batch.patch_namespaced_job(
            name, namespace, dict(patch), _content_type=MERGE_PATCH, _preload_content=False
        )
        await _json(resp)

    async def list_jobs(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        return await self._list(
            self.batch.list_job_for_all_namespaces, self.batch.list_namespaced_job,
            namespace, selector,
        )  # fmt: skip

    async def list_pods(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        return await self._list(
            self.core.list_pod_for_all_namespaces, self.core.list_namespaced_pod,
            namespace, selector,
        )  # fmt: skip

    @staticmethod
    async def _list(
        everywhere: Callable[..., Awaitable[Any]],
        one: Callable[..., Awaitable[Any]],
        namespace: str | None,
        selector: str,
    ) -> list[dict[str, Any]]:
        """The items ``selector`` picks in ``namespace`` (None: every namespace, for an operator
        that watches the whole cluster), retried while the apiserver is briefly unavailable."""
        list_, args = (everywhere, ()) if namespace is None else (one, (namespace,))
        got = await _retrying(lambda: list_(*args, label_selector=selector, _preload_content=False))
        return got["items"]  # type: ignore[no-any-return]

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await _found(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    async def read_node(self, name: str) -> dict[str, Any] | None:
        return await _found(self.core.read_node(name, _preload_content=False))

    async def fail_pod(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch a pod's status, conditional on the version read (409 if it changed), then
        remove it with grace period 0: no kubelet is left to do either."""
        meta = pod["metadata"]
        body = {
            "metadata": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
            "status": dict(status),
        }
        await _json(
            await self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], body,
                _content_type=MERGE_PATCH, _preload_content=False,
            )
        )  # fmt: skip
        await self.remove_pod(pod)

    async def remove_pod(self, pod: Mapping[str, Any]) -> None:
        """Delete a pod at once (grace period 0), only if it is still the one read (its uid)."""
        meta = pod["metadata"]
        try:
            await _json(
                # with a body the apiserver reads the options from it only, query ignored
                await self.core.delete_namespaced_pod(
                    meta["name"], meta["namespace"], _preload_content=False,
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                )
            )  # fmt: skip
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes:
        resp = await self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        data = (await _json(resp)).get("data") or {}
        if key not in data:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key])

    async def kueue_workload(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        """The Workload Kueue made for a Job; None without Kueue, its RBAC, or a Workload yet."""
        try:
            resp = await self.custom.list_namespaced_custom_object(
                "kueue.x-k8s.io", "v1beta2", namespace, "workloads",
                label_selector=f"kueue.x-k8s.io/job-uid={job_uid}", _preload_content=False,
            )  # fmt: skip
            items = (await _json(resp))["items"]
        except ApiException as e:
            if e.status in (403, 404):
                return None
            raise
        return items[0] if items else None

    # --- kopf peering -----------------------------------------------------------------------------
    async def read_peering(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        """kopf's KopfPeering in ``namespace`` (ClusterKopfPeering when None); None if absent."""
        if namespace is None:
            call = self.custom.get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", name, _preload_content=False
            )
        else:
            call = self.custom.get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", name, _preload_content=False
            )
        return await _found(call)

    # --- RecognitionJobs ------------------------------------------------------------------------
    async def read_rj(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
            )
            return await _json(resp)  # type: ignore[no-any-return]
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def list_rjs(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            got = await _retrying(
                lambda: self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _preload_content=False
                )
            )
        else:
            got = await _retrying(
                lambda: self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _preload_content=False
                )
            )
        return got["items"]  # type: ignore[no-any-return]

    async def patch_rj_status(
        self,
        namespace: str,
        name: str,
        uid: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge-patch ``status``; None when the RJ (with this uid) is gone.

        With ``resource_version`` the write is conditional on it: the apiserver answers 409 when
        the RJ changed since it was read, raised as ``StaleStatus`` so the writer can re-read.
        """
        metadata: dict[str, Any] = {"uid": uid}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body = {"metadata": metadata, "status": dict(status)}
        try:
            resp = await self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
            return await _json(resp)  # type: ignore[no-any-return]
        except ApiException as e:
            if e.status == 409 and resource_version is not None:
                raise StaleStatus(name) from e
            if e.status in (404, 409):
                return None
            raise
