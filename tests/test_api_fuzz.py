"""Property-based fuzzing of the whole OpenAPI surface against the real apiserver and Redis.

Schemathesis generates valid and invalid requests for every operation. Whatever it sends, the API
answers without a 5xx, and the only RecognitionJobs that exist afterwards are those of accepted
(202) submissions: a rejected request creates nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from kubernetes import client
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from apirig import api_settings, serve_in_thread
from rollcall_api.app import create_app
from rollcall_api.settings import Settings
from rollcall_contract.model import GROUP, PLURAL, VERSION

EXAMPLES = 30  # per operation and mode: a few hundred requests, well under a minute


@dataclass
class Seen:
    accepted: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)


@pytest.fixture
def served(
    tmp_path: Path, kubeconfig: Path, redis_url: str, crds: list[str], namespace: str
) -> Iterator[tuple[str, dict[str, str]]]:
    settings_, issued = api_settings(
        tmp_path,
        kubeconfig,
        redis_url,
        {"north": [namespace]},
        submissions_per_minute=0,  # hundreds of POSTs from one school on purpose
    )
    with serve_in_thread(settings_) as url:
        yield url, {"Authorization": f"Bearer {issued['north']}"}


def test_fuzzed_requests_never_5xx_and_rejected_ones_create_nothing(
    served: tuple[str, dict[str, str]], namespace: str, k8s_api: client.ApiClient, tmp_path: Path
) -> None:
    url, auth = served
    doc = create_app(Settings(keys_file=tmp_path / "unused.yaml")).openapi()
    schema = schemathesis.openapi.from_dict(doc)
    seen = Seen()
    session = requests.Session()
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 8
    for operation in operations:
        if operation.path.endswith("/events"):
            continue  # a stream: covered for unknown ids by the GET/404 cases below
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(
                operation.as_strategy(generation_mode=mode),
                url,
                auth["Authorization"],
                session,
                seen,
            )

    print(f"fuzzed: statuses {sorted(seen.statuses.items())}, accepted {len(seen.accepted)}")
    assert not seen.server_errors, seen.server_errors[:5]
    listed: Any = client.CustomObjectsApi(k8s_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )
    created = listed["items"]
    assert {rj["metadata"]["name"] for rj in created} == seen.accepted
    assert seen.statuses.get(422, 0) > 0 and seen.statuses.get(404, 0) > 0, seen.statuses


def _fuzz(strategy: Any, url: str, auth: str, session: requests.Session, seen: Seen) -> None:
    calls = [0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        # One request in ten goes without a key; the rest carry the school's real key.
        calls[0] += 1
        try:
            kwargs = case.as_transport_kwargs(base_url=url)
            headers = {
                k: v
                for k, v in (kwargs.pop("headers", None) or {}).items()
                if k.lower() != "authorization"
            }
            if calls[0] % 10:
                headers["Authorization"] = auth
            response = session.request(**kwargs, headers=headers, timeout=30)
        except (UnicodeError, ValueError, requests.exceptions.InvalidHeader):
            return  # the client library refused to send it: nothing reached the server
        status = response.status_code
        seen.statuses[status] = seen.statuses.get(status, 0) + 1
        label = f"{case.method} {case.formatted_path} -> {status}: {response.text[:200]}"
        if status >= 500:
            seen.server_errors.append(label)
        if case.method == "POST" and status == 202:
            seen.accepted.add(response.json()["id"])
        elif case.method == "POST":
            assert status in (400, 401, 404, 409, 413, 422), label
        if status >= 400:
            assert set(response.json()["error"]) >= {"code", "message"}, label

    with contextlib.suppress(Unsatisfiable):  # negative mode on an operation without inputs
        run()
