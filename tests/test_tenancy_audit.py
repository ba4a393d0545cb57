"""Tenant separation probed through the HTTP API, against the real apiserver and redis-server.

Two schools, north and south, each with its own namespace and key. What one school sends (a key
file entry that names its key twice, another school's continue token, an Idempotency-Key the other
school used, another school's namespace or job id) must neither read nor change the other's data,
nor tell it apart from something that does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import yaml
from kubernetes import client

from apirig import api_settings, in_process
from rollcall_api.auth import hash_key, parse_key_file
from rollcall_contract import keys
from rollcall_contract.model import GROUP, PLURAL, VERSION
from test_erase import Schools as _Schools
from test_erase import south_namespace  # noqa: F401  (fixture used by name)

BODY: dict[str, Any] = {
    "classCode": "7B",
    "images": {"claimName": "photos", "subPath": "p1"},
    "roster": ["s-001", "s-002"],
}
JOBS = "/v1/recognition-jobs"


@dataclass
class Schools(_Schools):
    """test_erase's two schools, who also submit jobs here."""

    async def submit(self, school: str, **headers: str) -> dict[str, Any]:
        resp = await self.http.post(JOBS, json=BODY, headers={**self.auth(school), **headers})
        assert resp.status_code == 202, resp.text
        return cast(dict[str, Any], resp.json())


@pytest.fixture
async def schools(
    tmp_path: Path,
    kubeconfig: Path,
    redis_url: str,
    crds: list[str],
    namespace: str,
    south_namespace: str,  # noqa: F811
) -> AsyncIterator[Schools]:
    settings, issued = api_settings(
        tmp_path, kubeconfig, redis_url, {"north": [namespace], "south": [south_namespace]}
    )
    async with in_process(settings) as http:
        yield Schools(http, issued, namespace, south_namespace)


def rj_names(k8s_api: client.ApiClient, ns: str) -> list[str]:
    listed = cast(
        dict[str, Any],
        client.CustomObjectsApi(k8s_api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL),
    )
    return sorted(str(item["metadata"]["name"]) for item in listed["items"])


def without_request_id(resp: httpx.Response) -> dict[str, Any]:
    body = cast(dict[str, Any], resp.json())
    body["error"].pop("requestId", None)
    return body


# --- the key file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "upper-case", "sha256-prefix"])
async def test_a_key_file_naming_one_key_for_two_schools_refuses_every_key(
    tmp_path: Path,
    kubeconfig: Path,
    redis_url: str,
    crds: list[str],
    namespace: str,
    south_namespace: str,  # noqa: F811
    k8s_api: client.ApiClient,
    spelling: str,
) -> None:
    """North's key listed a second time, for south: which school is it? The file is ambiguous,
    so it is refused as a malformed one is (503, /readyz fails), never read as the last entry
    says. Before the fix the later entry won silently: north's key listed south's jobs."""
    settings, issued = api_settings(
        tmp_path, kubeconfig, redis_url, {"north": [namespace], "south": [south_namespace]}
    )
    async with in_process(settings) as http:
        south_job = await http.post(
            JOBS, json=BODY, headers={"Authorization": f"Bearer {issued['south']}"}
        )
        assert south_job.status_code == 202, south_job.text
    digest = hash_key(issued["north"])
    again = {"same": digest, "upper-case": digest.upper(), "sha256-prefix": f"sha256:{digest}"}
    entries = [
        f"{digest}: {{school: north, namespaces: [{namespace}]}}",
        f"{hash_key(issued['south'])}: {{school: south, namespaces: [{south_namespace}]}}",
        f"{again[spelling]}: {{school: south, namespaces: [{south_namespace}]}}",
    ]
    settings.keys_file.write_text("\n".join(entries) + "\n")

    async with in_process(settings) as http:
        north = {"Authorization": f"Bearer {issued['north']}"}
        listed = await http.get(JOBS, params={"namespace": south_namespace}, headers=north)
        assert listed.status_code == 503, listed.text
        assert listed.json()["error"]["code"] == "keys_unavailable"
        assert south_job.json()["id"] not in listed.text
        default = await http.get(JOBS, headers=north)
        assert default.status_code == 503 and south_job.json()["id"] not in default.text
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["keys"] == "not loaded"
    assert rj_names(k8s_api, south_namespace) == [south_job.json()["id"]]
    assert rj_names(k8s_api, namespace) == []


def test_a_key_file_that_repeats_a_field_of_an_entry_is_refused() -> None:
    """``namespaces`` given twice in one entry: PyYAML keeps the last, the refusal keeps neither."""
    text = f"{'a' * 64}:\n  school: north\n  namespaces: [north]\n  namespaces: [south]\n"
    with pytest.raises(ValueError, match="more than once"):
        parse_key_file(text)
    valid = yaml.safe_dump({"c" * 64: {"school": "s", "namespaces": ["a"]}})
    assert [c.namespaces for c in parse_key_file(valid).values()] == [("a",)]


# --- requests of one school naming the other's things --------------------------------------------


async def test_another_schools_continue_token_lists_only_the_callers_jobs(
    schools: Schools, k8s_api: client.ApiClient
) -> None:
    south_ids = sorted([(await schools.submit("south"))["id"] for _ in range(3)])
    await asyncio.sleep(1.1)  # names start with the creation second: north's sorts after
    north_id = (await schools.submit("north"))["id"]
    page = await schools.http.get(JOBS, params={"limit": 1}, headers=schools.auth("south"))
    token = page.json()["continue"]
    assert token and page.json()["items"][0]["id"] == south_ids[0]

    # South's own token, replayed by north, pages through north's namespace only.
    replayed = await schools.http.get(
        JOBS, params={"continue": token}, headers=schools.auth("north")
    )
    assert replayed.status_code == 200, replayed.text
    assert [j["namespace"] for j in replayed.json()["items"]] == [schools.north]
    assert not any(i in replayed.text for i in south_ids)

    # Tokens crafted to start in south's part of the store: refused, nothing of south's listed.
    decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for start in (f"/../{schools.south}/", f"../{schools.south}/", f"/{schools.south}/", "//"):
        forged = base64.urlsafe_b64encode(json.dumps({**decoded, "start": start}).encode())
        resp = await schools.http.get(
            JOBS, params={"continue": forged.decode().rstrip("=")}, headers=schools.auth("north")
        )
        assert resp.status_code == 400, (start, resp.text)
        assert resp.json()["error"]["code"] == "invalid_continue"
        assert schools.south not in resp.text and not any(i in resp.text for i in south_ids)
    assert rj_names(k8s_api, schools.north) == [north_id]


async def test_an_idempotency_key_used_by_another_school_is_not_its_job(
    schools: Schools, k8s_api: client.ApiClient, redis_client: redis.Redis
) -> None:
    south_job = await schools.submit("south", **{"Idempotency-Key": "roll-7B-p1"})
    resp = await schools.http.post(
        JOBS, json=BODY, headers={**schools.auth("north"), "Idempotency-Key": "roll-7B-p1"}
    )
    assert resp.status_code == 202, resp.text
    assert "idempotent-replayed" not in resp.headers
    north_job = resp.json()
    assert north_job["id"] != south_job["id"] and north_job["namespace"] == schools.north
    assert rj_names(k8s_api, schools.south) == [south_job["id"]]
    assert rj_names(k8s_api, schools.north) == [north_job["id"]]
    # Each school's claim names its own job; north's did not overwrite south's.
    south_claim = redis_client.get(keys.idempotency(schools.south, "roll-7B-p1"))
    assert south_claim is not None and json.loads(south_claim)["name"] == south_job["id"]

    # A different body under the same key is no conflict with south's use of it either: north's
    # own first use decides (409 is about north's request, never south's).
    other = await schools.http.post(
        JOBS,
        json={**BODY, "classCode": "8C"},
        headers={**schools.auth("north"), "Idempotency-Key": "roll-7B-p1"},
    )
    assert other.status_code == 409 and south_job["id"] not in other.text


async def test_another_schools_namespace_and_job_answer_as_missing_ones_do(
    schools: Schools, redis_client: redis.Redis
) -> None:
    """No status, code or message tells north that south's namespace or job exists."""
    south_job = (await schools.submit("south"))["id"]
    made_up_ns = f"t-none-{uuid.uuid4().hex[:8]}"
    made_up_job = f"rj-{uuid.uuid4().hex[:15]}"
    north = schools.auth("north")

    def same(real: httpx.Response, missing: httpx.Response, real_name: str, made_up: str) -> None:
        assert real.status_code == missing.status_code == 404, (real.text, missing.text)
        assert json.dumps(without_request_id(real)).replace(real_name, "X") == json.dumps(
            without_request_id(missing)
        ).replace(made_up, "X")

    for method, path in [
        ("GET", JOBS),
        ("DELETE", "/v1/classes/7B/gallery"),
        ("DELETE", "/v1/classes/7B/students/s-001"),
    ]:
        real = await schools.http.request(
            method, path, params={"namespace": schools.south}, headers=north
        )
        missing = await schools.http.request(
            method, path, params={"namespace": made_up_ns}, headers=north
        )
        same(real, missing, schools.south, made_up_ns)
    real = await schools.http.post(JOBS, json={**BODY, "namespace": schools.south}, headers=north)
    missing = await schools.http.post(JOBS, json={**BODY, "namespace": made_up_ns}, headers=north)
    same(real, missing, schools.south, made_up_ns)

    for suffix in ("", "/results", "/events"):
        real = await schools.http.get(f"{JOBS}/{south_job}{suffix}", headers=north)
        missing = await schools.http.get(f"{JOBS}/{made_up_job}{suffix}", headers=north)
        same(real, missing, south_job, made_up_job)
    # Nothing was written in south's tenant by those erases (no tombstone, no marker).
    assert list(redis_client.scan_iter(match=f"{keys.tenant_prefix(schools.south)}gallery*")) == []
