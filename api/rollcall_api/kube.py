"""RecognitionJobs through the apiserver: the only Kubernetes calls the API makes.

The API's ServiceAccount needs exactly the verbs used here on ``recognitionjobs.rollcall.io``:
create, get, list, watch, delete. Apiserver failures become ``ApiError``s with a status a
client can act on; the apiserver's own validation (CRD schema, CEL) surfaces as 422.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from rollcall_api.errors import ApiError
from rollcall_contract import labels
from rollcall_contract.model import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("rollcall_api.kube")

NAME_PREFIX = "rj-"
# In ASCII order, so that the base-36 timestamp sorts as its number does.
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_RANDOM_SPACE = 36**8
LABEL_MANAGED_BY = labels.MANAGED_BY
LABEL_MODE = labels.MODE
LABEL_CLASS = labels.CLASS
ANNOTATION_SCHOOL = labels.ANNOTATION_SCHOOL
ANNOTATION_REQUEST_ID = labels.ANNOTATION_REQUEST_ID
MANAGER = labels.MANAGER_API


def _base36(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = _ALPHABET[r] + out
    return out.rjust(width, "0")


def new_job_name(now: float | None = None) -> str:
    """``rj-`` + creation second (7 base-36 digits) + 8 random base-36 characters (~41 bits).

    Names sort by creation time, and the apiserver lists (and pages) by name: a list is oldest
    first with no extra index. The random part keeps names unique without asking the apiserver;
    it is one ``randbelow`` (one getrandom call): eight ``secrets.choice`` calls were eight, and
    10 % of the event loop's busy samples under a submission burst (py-spy).
    """
    stamp = _base36(int(time.time() if now is None else now), 7)
    return NAME_PREFIX + stamp + _base36(secrets.randbelow(_RANDOM_SPACE), 8)


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason or "apiserver error")
    except (TypeError, ValueError):
        return str(exc.reason or "apiserver error")


def api_error(exc: ApiException, what: str) -> ApiError:
    """Map an apiserver error to what the caller should see."""
    status = int(exc.status or 0)
    if status == 404:
        return ApiError(404, f"{what} not found")
    if status == 409:
        return ApiError(409, f"{what}: {_status_message(exc)}")
    if status in (400, 422):
        return ApiError(422, f"rejected by the apiserver: {_status_message(exc)}")
    if status == 410:
        return ApiError(400, "the continue token has expired; list again", code="continue_expired")
    log.error("apiserver error", extra={"status": status, "reason": exc.reason, "what": what})
    if status in (401, 403):
        return ApiError(502, "the API is not allowed to do this in the apiserver")
    if status == 429 or status >= 500:
        return ApiError(
            503, "the apiserver is unavailable, retry later", headers={"Retry-After": "1"}
        )
    return ApiError(502, "unexpected apiserver response")


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    continue_token: str | None


class RecognitionJobs:
    """Thin async wrapper over the custom-objects API for one resource."""

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        self.api_client = api_client
        self.objects = client.CustomObjectsApi(api_client)
        self.timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except ApiException as exc:
            raise api_error(exc, what) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.error("apiserver unreachable", extra={"error": repr(exc)})
            raise ApiError(
                503, "the apiserver is unreachable", headers={"Retry-After": "1"}
            ) from None

    async def ping(self) -> None:
        await self._call(
            "version", client.VersionApi(self.api_client).get_code(_request_timeout=self.timeout)
        )

    async def create(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> dict[str, Any]:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": spec,
        }
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}"
        result: dict[str, Any] = await self._call(
            f"recognition job {name}",
            self._post_json(path, json.dumps(body, separators=(",", ":")).encode()),
        )
        return result

    async def _post_json(self, path: str, body: bytes) -> Any:
        """POST a JSON body to the apiserver with the client's session, TLS, proxy and auth.

        The submit path's one apiserver call, made without kubernetes_asyncio's generated
        method: that walks the body to sanitise it, processes every parameter and re-reads the
        response through its deserialiser, about 8 % of the event loop's CPU per submission
        (py-spy). Errors raise ``ApiException`` as the generated call does.
        """
        api = self.api_client
        headers = {**api.default_headers, "Content-Type": "application/json"}
        headers["Accept"] = "application/json"
        await api.update_params_for_auth(headers, [], ["BearerToken"])
        rest = api.rest_client
        extra: dict[str, Any] = {}
        if rest.proxy:
            extra["proxy"] = rest.proxy
        if rest.proxy_headers:
            extra["proxy_headers"] = rest.proxy_headers
        if rest.server_hostname:
            extra["server_hostname"] = rest.server_hostname
        async with rest.pool_manager.post(
            f"{api.configuration.host}{path}",
            data=body,
            headers=headers,
            timeout=self._client_timeout,
            **extra,
        ) as resp:
            data = await resp.read()
            if not 200 <= resp.status <= 299:
                exc = ApiException(status=resp.status, reason=resp.reason)
                exc.body = data
                raise exc
            return json.loads(data)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                f"recognition job {name}",
                self.objects.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
                ),
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def find(self, namespaces: tuple[str, ...], name: str) -> dict[str, Any] | None:
        """The job in whichever of the caller's namespaces holds it (looked up concurrently)."""
        if len(namespaces) == 1:
            return await self.get(namespaces[0], name)
        found = await asyncio.gather(*(self.get(ns, name) for ns in namespaces))
        return next((obj for obj in found if obj is not None), None)

    async def list(
        self, namespace: str, *, label_selector: str, limit: int, continue_token: str | None
    ) -> Page:
        kwargs: dict[str, Any] = {"label_selector": label_selector, "limit": limit}
        if continue_token:
            kwargs["_continue"] = continue_token
        try:
            result = await self._call(
                "recognition jobs",
                self.objects.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=self.timeout, **kwargs
                ),
            )
        except ApiError as exc:
            if continue_token and exc.status == 422:  # the apiserver's 400 for a bad token
                raise ApiError(400, "invalid continue token", code="invalid_continue") from None
            raise
        return Page(
            items=list(result.get("items") or []),
            continue_token=(result.get("metadata") or {}).get("continue") or None,
        )

    async def delete(self, namespace: str, name: str) -> None:
        await self._call(
            f"recognition job {name}",
            self.objects.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
                _request_timeout=self.timeout,
            ),
        )

    async def current_version(self, namespace: str) -> str:
        """The namespace's RecognitionJob collection resourceVersion now (a one-item list)."""
        result = await self._call(
            "recognition jobs",
            self.objects.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, limit=1, _request_timeout=self.timeout
            ),
        )
        return str((result.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self, namespace: str, name: str | None, resource_version: str, timeout_seconds: int = 300
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events after ``resource_version`` for one job, or every job of the
        namespace when ``name`` is None; ends when the server does.

        A raw watch (not ``kubernetes_asyncio.watch.Watch``): the caller decides what 410 means.
        """
        selector: dict[str, Any] = {"field_selector": f"metadata.name={name}"} if name else {}
        resp = await self._call(
            f"recognition job {name}" if name else "recognition jobs",
            self.objects.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                **selector,
                resource_version=resource_version,
                allow_watch_bookmarks=False,
                timeout_seconds=timeout_seconds,
                watch=True,
                _preload_content=False,
                _request_timeout=timeout_seconds + 30,
            ),
        )
        try:
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                event = json.loads(line)
                etype = str(event.get("type", ""))
                obj = event.get("object") or {}
                if etype == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise ApiError(
                        410 if code == 410 else 503,
                        str(obj.get("message", "")),
                        code="watch_expired" if code == 410 else None,
                    )
                yield etype, obj
        finally:
            resp.release()


class KubeEvents:
    """Kubernetes Events the API records in a school's namespace (RBAC: ``create`` on events).

    The Event names the namespace itself as its object: an erase concerns the school's data in
    Redis, which no Kubernetes object stands for.
    """

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        self.core = client.CoreV1Api(api_client)
        self.timeout = timeout

    async def record(self, namespace: str, reason: str, message: str) -> bool:
        """Create one Normal Event; False (logged) if the apiserver refused it."""
        now = datetime.datetime.now(datetime.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="rollcall-api-", namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Namespace", name=namespace, namespace=namespace
            ),
            reason=reason,
            message=message[:1024],
            type="Normal",
            source=client.V1EventSource(component=labels.MANAGER_API),
            reporting_component=labels.MANAGER_API,
            reporting_instance=socket.gethostname()[:128],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(namespace, body, _request_timeout=self.timeout)
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            log.error(
                "kubernetes event not recorded",
                extra={"namespace": namespace, "reason": reason, "error": repr(exc)[:300]},
            )
            return False
        return True
