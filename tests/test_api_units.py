"""API pieces that need no server: keys, body limit, error mapping, import hygiene, OpenAPI."""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param

from rollcall_api import looplag
from rollcall_api.app import create_app, kube_client
from rollcall_api.auth import KeyStore, hash_key, new_key, parse_key_file
from rollcall_api.deps import bearer_token
from rollcall_api.errors import ApiError
from rollcall_api.kube import new_job_name
from rollcall_api.logs import (
    BATCH_SECONDS,
    DeferredHandler,
    configure_logging,
    request_id_var,
    stop_logging,
)
from rollcall_api.middleware import RequestIds
from rollcall_api.routes import enrollments, jobs
from rollcall_api.schemas import EnrollmentRequest, JobRequest
from rollcall_api.service import parse_status
from rollcall_api.settings import Settings
from rollcall_api.store import decode_results
from rollcall_contract.model import DNS_LABEL, Phase


def test_keys_are_high_entropy_and_stored_only_as_digests(tmp_path: Path) -> None:
    key = new_key()
    assert key.startswith("rk_") and len(key) >= 43
    assert new_key() != key
    (tmp_path / "keys.yaml").write_text(
        f"{hash_key(key)}:\n  school: north\n  namespaces: [north, north-2]\n"
    )
    store = KeyStore(tmp_path / "keys.yaml")
    store._load_sync()
    caller = store.authenticate(key)
    assert caller is not None and caller.school == "north"
    assert caller.namespaces == ("north", "north-2") and caller.default_namespace == "north"
    assert caller.key_id == hash_key(key)[:8]
    assert store.authenticate(key + "x") is None
    assert store.authenticate("") is None
    assert key not in (tmp_path / "keys.yaml").read_text()


def test_each_of_many_schools_keys_finds_its_own_school(tmp_path: Path) -> None:
    """The digest lookup maps every key to its own school, and a near-miss to none."""
    keys = {f"school-{i}": new_key() for i in range(300)}
    (tmp_path / "keys.yaml").write_text(
        "".join(f"{hash_key(k)}: {{school: {s}, namespaces: [{s}]}}\n" for s, k in keys.items())
    )
    store = KeyStore(tmp_path / "keys.yaml")
    store._load_sync()
    assert len(store) == 300
    for school, key in keys.items():
        caller = store.authenticate(key)
        assert caller is not None and caller.school == school and caller.namespaces == (school,)
        assert store.authenticate(key[:-1]) is None
    assert "digest" not in repr(caller)  # never logged with the caller


@pytest.mark.parametrize(
    "text",
    [
        "- not a mapping",
        "abc: {school: x, namespaces: [a]}",  # not a sha256 digest
        f"{'a' * 64}: {{school: x, namespaces: []}}",
        f"{'a' * 64}: {{school: x, namespaces: [Not_A_Label]}}",
        f"{'a' * 64}: {{school: x, namespaces: [a], extra: 1}}",
        f'{"a" * 64}: {{school: x, namespaces: ["a\\n"]}}',  # a label then a newline
        f'"{"a" * 64}\\n": {{school: x, namespaces: [a]}}',  # a digest then a newline
    ],
)
def test_malformed_key_files_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_key_file(text)


def test_json_key_files_and_sha256_prefixes_are_accepted() -> None:
    digest = hash_key("k")
    parsed = parse_key_file(json.dumps({f"sha256:{digest}": {"school": "s", "namespaces": ["a"]}}))
    assert list(parsed) == [bytes.fromhex(digest)]


async def test_key_rotation_is_picked_up_and_a_bad_file_refuses_every_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.yaml"
    old, new = new_key(), new_key()
    path.write_text(f"{hash_key(old)}: {{school: s, namespaces: [a]}}\n")
    store = KeyStore(path)
    await store.reload()
    assert store.loaded and store.authenticate(old)
    path.write_text(f"{hash_key(new)}: {{school: s, namespaces: [a, b]}}\n")
    await store.reload()
    assert store.authenticate(old) is None and store.authenticate(new)
    # Fail closed: the malformed file may have been meant to revoke ``new``.
    path.write_text("::: not yaml [")
    await store.reload()
    assert not store.loaded and store.authenticate(new) is None and store.authenticate(old) is None
    path.write_text(f"{hash_key(old)}: {{school: s, namespaces: [a]}}\n")
    await store.reload()
    assert store.loaded and store.authenticate(old) and store.authenticate(new) is None
    path.unlink()
    await store.reload()
    assert not store.loaded and store.authenticate(old) is None


async def test_a_missing_key_file_leaves_the_store_not_ready(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "absent.yaml")
    await store.reload()
    assert not store.loaded and len(store) == 0


def test_status_parsing_tolerates_fields_from_newer_operators() -> None:
    status = parse_status(
        {
            "phase": "Running",
            "progress": {"done": 2, "total": 5},
            "newThing": {"x": 1},
            "summary": {"images": 3, "futureCount": 9},
        }
    )
    assert status.phase is Phase.RUNNING and status.progress.done == 2
    assert status.summary is not None and status.summary.images == 3
    assert parse_status({"phase": "Exploded"}).phase is Phase.PENDING
    assert parse_status(None).phase is Phase.PENDING


def test_results_decoding_joins_parts_and_flags_corruption() -> None:
    fields = {
        "parts": json.dumps({"photos": 2, "summary": 1}),
        "photos": '[{"a":',
        "photos:1": "1}]",
        "summary": '{"images": 1}',
    }
    assert decode_results(fields) == {"photos": [{"a": 1}], "summary": {"images": 1}}
    with pytest.raises(ApiError) as err:
        decode_results({"parts": json.dumps({"photos": 2}), "photos": "["})
    assert err.value.status == 502
    with pytest.raises(ApiError):
        decode_results({"photos": "[]"})


def test_importing_the_api_pulls_no_ml_or_operator_runtime() -> None:
    """The API image ships without onnxruntime/numpy/cv2/kopf: importing them would crash it."""
    code = (
        "import sys, rollcall_api.app, rollcall_api.__main__;"
        "bad = sorted(m for m in ('onnxruntime', 'numpy', 'cv2', 'kopf') if m in sys.modules);"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.fixture
async def bare_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    """The app without its lifespan: enough for what is refused before any client is used."""
    yield create_app(Settings(keys_file=tmp_path / "none.yaml", max_body_bytes=4096))


async def test_oversize_bodies_are_refused_before_parsing(bare_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=bare_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        declared = await http.post("/v1/recognition-jobs", content=b"{" * 5000)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b" " * 1000

        streamed = await http.post(
            "/v1/recognition-jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["requestId"] == streamed.headers["x-request-id"]
        bad = await http.post("/v1/recognition-jobs", headers={"content-length": "abc"})
        assert bad.status_code == 400


def test_openapi_documents_every_route_and_the_bearer_scheme(tmp_path: Path) -> None:
    doc = create_app(Settings(keys_file=tmp_path / "k.yaml")).openapi()
    assert set(doc["paths"]) == {
        "/healthz",
        "/readyz",
        "/v1/recognition-jobs",
        "/v1/recognition-jobs/{job_id}",
        "/v1/recognition-jobs/{job_id}/results",
        "/v1/recognition-jobs/{job_id}/events",
        "/v1/enrollments",
        "/v1/classes/{class_code}/students/{student_id}",
        "/v1/classes/{class_code}/gallery",
    }
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            expected: list[dict[str, list[str]]] | None = (
                [{"HTTPBearer": []}] if path.startswith("/v1/") else None
            )
            assert operation.get("security") == expected, path
    for path in ("/v1/recognition-jobs", "/v1/enrollments"):
        (param,) = doc["paths"][path]["post"]["parameters"]
        assert (param["name"], param["in"], param["required"]) == (
            "Idempotency-Key",
            "header",
            False,
        )
        assert doc["paths"][path]["post"]["requestBody"]["required"] is True
    post = doc["paths"]["/v1/recognition-jobs"]["post"]
    assert "202" in post["responses"] and "413" in post["responses"]
    assert post["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorBody"
    )


def test_job_names_sort_by_creation_time_and_are_dns_labels() -> None:
    stamps = [0, 35, 36, 1_700_000_000, 1_700_000_001, 2_200_000_000, 4_000_000_000]
    names = [new_job_name(t) for t in stamps]
    assert names == sorted(names)
    assert all(re.match(DNS_LABEL, n) and len(n) == 18 for n in names)
    assert len({new_job_name(1_700_000_000) for _ in range(1000)}) == 1000


def test_job_names_random_part_spans_the_whole_alphabet() -> None:
    """One draw for all 8 characters must still reach every character in every position."""
    tails = [new_job_name(0)[-8:] for _ in range(2000)]
    for position in range(8):
        assert len({t[position] for t in tails}) == 36, position


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("386412 96243 2\n", 96243e-9),
        ("0 5127962000 1", 5.127962),
        ("0 0 0", 0.0),
        ("", None),
        ("1 2", None),
        ("1 -2 3", None),
        ("a b c", None),
    ],
)
def test_run_delay_is_read_from_a_schedstat_line(text: str, expected: float | None) -> None:
    assert looplag.run_delay(text) == (None if expected is None else pytest.approx(expected))


def test_run_delay_of_this_thread_is_readable() -> None:
    """The probe's own-share figure needs it on the Linux nodes the API runs on."""
    reader = looplag.RunDelay()
    first = reader.read()
    time.sleep(0.01)
    second = reader.read()
    reader.close()
    assert first is not None and second is not None and 0 <= first <= second
    assert reader.read() is None
    assert looplag.RunDelay(Path("/nonexistent/schedstat")).read() is None


@pytest.mark.parametrize(
    ("lag", "waited", "own"),
    [
        (0.030, 0.025, 0.005),  # mostly a wait for a CPU
        (0.030, 0.0, 0.030),  # all the loop's own work
        (0.002, 0.010, 0.0),  # a wait made up before the timer was due
        (0.030, None, 0.030),  # no schedstat: all of it counts
    ],
)
def test_own_share_of_lag(lag: float, waited: float | None, own: float) -> None:
    assert looplag.own_share(lag, waited) == pytest.approx(own)


def test_lag_buckets_are_fine_around_the_10ms_goal() -> None:
    buckets = looplag.LAG_BUCKETS
    assert list(buckets) == sorted(buckets)
    fine = [b for b in buckets if b <= 0.015]
    assert 0.01 in buckets and max(b - a for a, b in itertools.pairwise(fine)) < 0.0026


def _kubeconfig(path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    return path


@pytest.mark.parametrize(
    ("env", "proxy"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "http://proxy.internal:3128"),
        ({"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "10.0.0.1"}, None),
    ],
)
async def test_apiserver_client_reads_the_proxy_environment_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], proxy: str | None
) -> None:
    """aiohttp re-read proxy variables and ~/.netrc in a thread on every apiserver call."""
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(kubeconfig=_kubeconfig(tmp_path / "kubeconfig"))
    api_client = await kube_client(settings)
    try:
        rest = api_client.rest_client
        assert rest.pool_manager.trust_env is False
        assert rest.proxy == proxy
    finally:
        await api_client.close()


_PHOTOS = {"claimName": "photos", "subPath": "2026-11-27/p1"}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (JobRequest, {"classCode": "7B", "images": _PHOTOS, "roster": ["s-1", "s-2"]}),
        (JobRequest, {"classCode": "7B", "images": _PHOTOS, "roster": ["a"], "namespace": "n"}),
        (
            JobRequest,
            {
                "classCode": "7B",
                "images": _PHOTOS,
                "roster": ["s-1"],
                "matching": {"threshold": 0.5},
                "resources": {"gpus": 0, "cpu": "500m"},
                "runPolicy": {"backoffLimit": 1},
                "output": {"annotate": True, "claimName": "reviews", "ttlSeconds": 3600},
            },
        ),
        (EnrollmentRequest, {"classCode": "7B", "images": _PHOTOS}),
    ],
)
def test_spec_body_equals_the_revalidated_spec(
    kind: type[JobRequest], body: dict[str, object]
) -> None:
    """The submit path skips the second validation; what reaches the apiserver is unchanged."""
    request = kind.model_validate(body)
    expected = request.spec().model_dump(by_alias=True, mode="json", exclude_none=True)
    assert request.spec_body() == expected
    assert "namespace" not in request.spec_body()


@pytest.mark.parametrize("router", [jobs.router, enrollments.router])
def test_submit_routes_solve_one_dependency_and_no_header_parameter(router: APIRouter) -> None:
    """Caller, Idempotency-Key and app state come as one dependency (Submitting): FastAPI
    solves each dependency, and parses query, cookies and headers for each parameter, per
    request."""
    (route,) = (r for r in router.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ()))
    assert [d.call.__name__ for d in route.dependant.dependencies if d.call] == ["submitting"]
    assert [d.dependencies for d in route.dependant.dependencies] == [[]]
    assert not route.dependant.header_params and not route.dependant.query_params


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer rk_abc", "rk_abc"),
        ("bearer rk_abc", "rk_abc"),
        ("BEARER  rk_abc ", "rk_abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic rk_abc", None),
        ("rk_abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_is_read_as_fastapis_http_bearer_reads_it(
    header: str | None, token: str | None
) -> None:
    assert bearer_token(header) == token
    scheme, credentials = get_authorization_scheme_param(header)
    fastapi_reads = credentials if scheme.lower() == "bearer" and credentials else None
    assert fastapi_reads == token


def test_request_ids_are_unique_32_hex_digits_and_differ_per_process() -> None:
    ids, other = RequestIds(), RequestIds()
    made = [ids() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made)
    assert other()[:16] != made[0][:16]


def test_the_log_writer_writes_every_line_in_order_across_its_pauses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lines queued while the writer pauses (BATCH_SECONDS), or after it went back to waiting,
    are all written, in order, without a stop to flush them."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log = logging.getLogger("rollcall_api.test")
    try:
        configure_logging("info", json_format=True)
        for i in range(300):
            log.info("line %d", i)
            if i % 100 == 99:
                time.sleep(3 * BATCH_SECONDS)  # the writer runs dry and waits again
        deadline = time.monotonic() + 30
        written = ""
        while written.count("\n") < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
            written += capsys.readouterr().err
        stop_logging()
    finally:
        stop_logging()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line)["message"] for line in written.splitlines()]
    assert lines == [f"line {i}" for i in range(300)]


def test_queued_log_lines_keep_request_id_arguments_and_exception(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The writer thread formats later: what the line says is fixed when the call is made."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", json_format=True)
        assert isinstance(root.handlers[0], DeferredHandler)
        token = request_id_var.set("req-42")
        names = ["north"]
        try:
            logging.getLogger("rollcall_api.test").info("schools %s", names, extra={"n": 1})
            names.append("south")  # after the call: not in the line
            try:
                raise KeyError("boom")
            except KeyError:
                logging.getLogger("rollcall_api.test").exception("failed")
        finally:
            request_id_var.reset(token)
        logging.getLogger("rollcall_api.test").warning("outside")
        stop_logging()
    finally:
        stop_logging()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["message"], r["request_id"]) for r in lines] == [
        ("schools ['north']", "req-42"),
        ("failed", "req-42"),
        ("outside", None),
    ]
    assert lines[0]["n"] == 1
    assert lines[1]["exc"] == "KeyError" and "boom" in lines[1]["traceback"]
