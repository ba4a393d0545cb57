"""The ``rollcall`` CLI through its real commands against a running API, apiserver and Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from apirig import api_settings, free_port, serve_in_thread, write_key_file
from rollcall_api.auth import hash_key
from rollcall_api.settings import Settings
from rollcall_cli.cli import app
from rollcall_contract import keys
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_job.results import write_results


@dataclass
class Cli:
    url: str
    key: str
    ns: str
    runner: CliRunner

    def __call__(self, *args: str, env: dict[str, str] | None = None, auth: bool = True) -> Any:
        prefix = ["--url", self.url, "--api-key", self.key] if auth else []
        return self.runner.invoke(app, [*prefix, *args], env=env, catch_exceptions=False)


@pytest.fixture
def cli(
    tmp_path: Path, kubeconfig: Path, redis_url: str, crds: list[str], namespace: str
) -> Iterator[Cli]:
    settings, issued = api_settings(
        tmp_path, kubeconfig, redis_url, {"north": [namespace]}, events_poll_seconds=0.2
    )
    with serve_in_thread(settings) as url:
        yield Cli(url, issued["north"], namespace, CliRunner())


def rj(k8s_api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj: Any = client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    return cast(dict[str, Any], obj)


def set_status(k8s_api: client.ApiClient, ns: str, name: str, status: dict[str, Any]) -> None:
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": status}
    )


SUBMIT = [
    "submit",
    "--class",
    "7B",
    "--claim",
    "photos",
    "--sub-path",
    "p1",
    "--roster",
    "s-001,s-002,s-003",
    "--threshold",
    "0.5",
]


def test_submit_get_list_cancel(cli: Cli, k8s_api: client.ApiClient) -> None:
    res = cli(*SUBMIT, "--json")
    assert res.exit_code == 0, res.output
    job = json.loads(res.stdout)
    spec = rj(k8s_api, cli.ns, job["id"])["spec"]
    assert spec["classCode"] == "7B" and spec["roster"] == ["s-001", "s-002", "s-003"]
    assert spec["images"] == {"claimName": "photos", "subPath": "p1"}
    assert spec["matching"]["threshold"] == 0.5

    res = cli("get", job["id"])
    assert res.exit_code == 0 and job["id"] in res.stdout and "Pending" in res.stdout
    res = cli("list", "--class", "7B", "--json")
    assert [j["id"] for j in json.loads(res.stdout)["items"]] == [job["id"]]
    res = cli("cancel", job["id"])
    assert res.exit_code == 0 and "cancelled" in res.stdout
    with pytest.raises(ApiException):
        rj(k8s_api, cli.ns, job["id"])
    assert cli("get", job["id"]).exit_code == 4


def test_retried_submit_with_an_idempotency_key_and_enroll(
    cli: Cli, k8s_api: client.ApiClient
) -> None:
    first = cli(*SUBMIT, "--idempotency-key", "roll-7B-p1", "--json")
    again = cli(*SUBMIT, "--idempotency-key", "roll-7B-p1", "--json")
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]
    res = cli("enroll", "--class", "7B", "--claim", "photos", "--sub-path", "enrol", "--json")
    assert res.exit_code == 0, res.output
    assert rj(k8s_api, cli.ns, json.loads(res.stdout)["id"])["spec"]["mode"] == "enroll"


@pytest.mark.parametrize("command", [SUBMIT, ["enroll", "--class", "7B", "--claim", "photos"]])
def test_model_flag_chooses_the_embedder_card(
    cli: Cli, k8s_api: client.ApiClient, command: list[str]
) -> None:
    res = cli(*command, "--model", "mobilefacenet-sirius-int8-v2", "--json")
    assert res.exit_code == 0, res.output
    spec = rj(k8s_api, cli.ns, json.loads(res.stdout)["id"])["spec"]
    assert spec["model"] == "mobilefacenet-sirius-int8-v2"
    bad = cli(*command, "--model", "Not_A_Label")
    assert bad.exit_code != 0 and "model" in bad.output


def test_connection_from_env_or_config_file_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    env = {"ROLLCALL_URL": cli.url, "ROLLCALL_API_KEY": cli.key, "ROLLCALL_CONFIG": ""}
    assert cli("list", env=env, auth=False).exit_code == 0
    config = tmp_path / "config.toml"
    key_file = tmp_path / "key"
    key_file.write_text(cli.key + "\n")
    config.write_text(f'url = "{cli.url}"\napi_key_file = "{key_file}"\n')
    assert cli("--config", str(config), "list", auth=False).exit_code == 0

    no_key = cli("--url", cli.url, "--config", str(tmp_path / "absent.toml"), "list", auth=False)
    assert no_key.exit_code == 2
    bad = cli("--url", cli.url, "--api-key", "rk_wrong", "list", auth=False)
    assert bad.exit_code == 3 and "unauthorized" in bad.stderr
    down = cli("--url", "http://127.0.0.1:1", "--api-key", cli.key, "list", auth=False)
    assert down.exit_code == 7
    invalid = cli("submit", "--class", "7B", "--claim", "photos")  # identify needs a roster
    assert invalid.exit_code == 6 and "roster" in invalid.stderr
    job = json.loads(cli(*SUBMIT, "--json").stdout)
    assert cli("results", job["id"]).exit_code == 5
    assert cli("get", "rj-nonexistent").exit_code == 4
    assert cli("submit", "--class", "7B").exit_code == 2


def _later(*steps: Callable[[], object], pause: float = 0.4) -> threading.Thread:
    def run() -> None:
        for step in steps:
            time.sleep(pause)
            step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_watch_follows_progress_then_prints_attendance(
    cli: Cli, k8s_api: client.ApiClient, redis_client: redis.Redis
) -> None:
    job = json.loads(cli(*SUBMIT, "--json").stdout)
    name, uid = job["id"], job["uid"]
    documents = {
        "summary": {"images": 3, "faces": 4, "matched": 2, "present": 2, "absent": 1},
        "attendance": {
            "present": [
                {"student": "s-001", "photo": "a.jpg", "face": 0, "score": 0.31},
                {"student": "s-002", "photo": "b.jpg", "face": 1, "score": 0.42},
            ],
            "uncertain": [
                {
                    "student": "s-004",
                    "faces": [
                        {"photo": "c.jpg", "face": 0, "score": 0.37, "rule": "low_quality:blur"},
                        {"photo": "b.jpg", "face": 2, "score": 0.33, "rule": "contested"},
                    ],
                }
            ],
            "absent": ["s-003"],
            "unknown": [],
            "not_enrolled": [],
        },
        "photos": [],
    }
    thread = _later(
        lambda: set_status(
            k8s_api, cli.ns, name, {"phase": "Running", "progress": {"done": 0, "total": 3}}
        ),
        lambda: redis_client.hset(keys.job_progress(cli.ns, uid), mapping={"done": 2, "total": 3}),
        lambda: write_results(redis_client, cli.ns, uid, "a1", documents, ttl_seconds=600),
        lambda: set_status(
            k8s_api, cli.ns, name, {"phase": "Succeeded", "progress": {"done": 3, "total": 3}}
        ),
    )
    res = cli("watch", name)
    thread.join()
    assert res.exit_code == 0, res.output
    for text in ("s-001", "s-002", "present", "s-003", "absent"):
        assert text in res.stdout
    # an uncertain student is its own row, with the nearest face needing review
    (row,) = [line for line in res.stdout.splitlines() if "s-004" in line]
    assert "uncertain" in row and "b.jpg (+1)" in row and "0.33" in row


def test_watch_exit_codes_for_failed_and_cancelled_jobs(
    cli: Cli, k8s_api: client.ApiClient
) -> None:
    failed = json.loads(cli(*SUBMIT, "--json").stdout)["id"]
    thread = _later(
        lambda: set_status(
            k8s_api,
            cli.ns,
            failed,
            {"phase": "Failed", "reason": "BadInput", "message": "no photos"},
        )
    )
    res = cli("watch", failed)
    thread.join()
    assert res.exit_code == 10 and "no photos" in res.stderr

    cancelled = json.loads(cli(*SUBMIT, "--json").stdout)["id"]
    # Cancelled over plain HTTP: CliRunner swaps sys.stdout, so two runners cannot overlap.
    thread = _later(
        lambda: httpx.delete(
            f"{cli.url}/v1/recognition-jobs/{cancelled}",
            headers={"Authorization": f"Bearer {cli.key}"},
        )
    )
    res = cli("watch", cancelled)
    thread.join()
    assert res.exit_code == 11


def test_keygen_prints_a_key_and_its_file_entry() -> None:
    res = CliRunner().invoke(app, ["keygen", "--school", "north", "--namespace", "school-north"])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip()
    entry = yaml.safe_load(res.stderr.split("key-file entry:", 1)[1])
    assert entry == {hash_key(key): {"school": "north", "namespaces": ["school-north"]}}


def test_watch_reconnects_across_an_api_restart(
    tmp_path: Path,
    kubeconfig: Path,
    redis_url: str,
    crds: list[str],
    namespace: str,
    k8s_api: client.ApiClient,
    redis_client: redis.Redis,
) -> None:
    """A rolling update cuts the event stream; watch reconnects and still ends with the table."""
    key = write_key_file(tmp_path / "keys.yaml", {"north": [namespace]})["north"]
    settings = Settings(
        kubeconfig=kubeconfig,
        keys_file=tmp_path / "keys.yaml",
        redis_url=redis_url,
        keys_reload_seconds=0,
        events_poll_seconds=0.2,
    )
    port = free_port()
    first = serve_in_thread(settings, port)
    url = first.__enter__()
    auth = {"Authorization": f"Bearer {key}"}
    job = httpx.post(
        f"{url}/v1/recognition-jobs",
        json={
            "classCode": "7B",
            "images": {"claimName": "photos"},
            "roster": ["s-001"],
        },
        headers=auth,
    ).json()
    second: list[Any] = []

    def restart() -> None:
        time.sleep(0.8)
        first.__exit__(None, None, None)  # the old pod goes away mid-stream
        write_results(
            redis_client,
            namespace,
            job["uid"],
            "a1",
            {
                "summary": {"present": 1},
                "photos": [],
                "attendance": {
                    "present": [{"student": "s-001", "photo": "a.jpg", "score": 0.3}],
                    "absent": [],
                },
            },
            ttl_seconds=600,
        )
        set_status(k8s_api, namespace, job["id"], {"phase": "Succeeded"})
        time.sleep(0.5)
        server = serve_in_thread(settings, port)
        server.__enter__()
        second.append(server)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        res = CliRunner().invoke(app, ["--url", url, "--api-key", key, "watch", job["id"]])
        thread.join(30)
        assert res.exit_code == 0, res.output
        assert "reconnecting" in res.stderr and "s-001" in res.stdout
    finally:
        for server in second:
            server.__exit__(None, None, None)


def test_erase_student_and_class_need_yes_and_report_what_went(
    cli: Cli, redis_client: redis.Redis
) -> None:
    for model in ("m-a", "m-b"):
        redis_client.hset(
            keys.gallery(cli.ns, "7B", model), mapping={"s-001": b"\0" * 8, "s-002": b"\0" * 8}
        )
    refused = cli("erase", "student", "--class", "7B", "s-001")  # no --yes, no terminal
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert redis_client.hexists(keys.gallery(cli.ns, "7B", "m-a"), "s-001")
    assert cli("erase", "student", "--class", "7B", "../gallery", "--yes").exit_code == 2

    res = cli("erase", "student", "--class", "7B", "s-001", "--yes")
    assert res.exit_code == 0, res.output
    assert "templates=2" in res.stdout and "models=m-a,m-b" in res.stdout
    # One line, however long, when stdout is not a terminal: scripts grep it.
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("erased student")]
    assert len(line) > 80 and line.endswith("results=0"), res.stdout
    for model in ("m-a", "m-b"):
        assert redis_client.hkeys(keys.gallery(cli.ns, "7B", model)) == [b"s-002"]
    assert cli("erase", "student", "--class", "7B", "s-001", "--yes").exit_code == 4

    res = cli("erase", "class", "7B", "-y")
    assert res.exit_code == 0 and "templates=2" in res.stdout, res.output
    assert not redis_client.exists(keys.gallery(cli.ns, "7B", "m-a"))
    assert cli("erase", "class", "7B", "--yes").exit_code == 4
