"""``python -m rollcall_api`` as deployed: env settings, JSON logs with request ids, no keys in logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from apirig import free_port, write_key_file


def test_the_server_process_serves_and_logs_json_without_keys(
    tmp_path: Path, kubeconfig: Path, redis_url: str, crds: list[str], namespace: str
) -> None:
    key = write_key_file(tmp_path / "keys.yaml", {"north": [namespace]})["north"]
    port = free_port()
    env = {
        **os.environ,
        "ROLLCALL_API_KUBECONFIG": str(kubeconfig),
        "ROLLCALL_API_KEYS_FILE": str(tmp_path / "keys.yaml"),
        "ROLLCALL_API_REDIS_URL": redis_url,
        "ROLLCALL_API_HOST": "127.0.0.1",
        "ROLLCALL_API_PORT": str(port),
    }
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollcall_api"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        body = {"classCode": "7B", "images": {"claimName": "photos"}, "roster": ["s-1"]}
        auth = {"Authorization": f"Bearer {key}", "X-Request-ID": "proc-test-1"}
        assert httpx.post(f"{url}/v1/recognition-jobs", json=body, headers=auth).status_code == 202
        bad = httpx.get(f"{url}/v1/recognition-jobs", headers={"Authorization": "Bearer rk_x"})
        assert bad.status_code == 401
    finally:
        proc.terminate()
        proc.wait(15)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("logger") == "rollcall_api.access"]
    posted = next(r for r in access if r["request_id"] == "proc-test-1")
    assert posted["method"] == "POST" and posted["status"] == 202 and posted["school"] == "north"
    assert any(r["status"] == 401 for r in access)
    assert any(r.get("message") == "api keys loaded" for r in records)
    assert key not in text and "rk_x" not in text
    assert "\x1b[" not in text  # no terminal colour codes in machine logs
