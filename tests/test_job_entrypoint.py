"""The container entry point: env contract in, exit code + termination summary out."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redisrig import free_port
from rollcall_contract import keys
from rollcall_contract.jobenv import ExitCode, JobSettings
from rollcall_job.__main__ import main, redact_url
from rollcall_job.results import read_results
from rollcall_job.termination import error_message, summary_message
from rollcall_operator.status import parse_termination_message
from toyfaces import ToyEngine, photo, save


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://app:s3cret@r.example:6380/2", "rediss://app:***@r.example:6380/2"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://u:p%40ss@[::1]:6379", "redis://u:***@[::1]:6379"),
    ],
)
def test_redact_url(url: str, want: str) -> None:
    assert redact_url(url) == want


def test_summary_message_fits_and_the_operator_can_read_it() -> None:
    summary = {
        "images": 5000,
        "faces": 9000,
        "matched": 8000,
        "unknown": 1000,
        "present": 30,
        "absent": 2,
        "errors": 3000,
        "model": "dlib-resnet-v1",
        "failed": [
            {"photo": f"period-{i:05d}/IMG_{i:06d}.jpg", "reason": "corrupt"} for i in range(3000)
        ],
    }
    text = summary_message(summary, result_key="rollcall:job:{u}:results")
    assert len(text.encode()) <= 4096
    doc = json.loads(text)
    assert doc["summary"]["truncated"] is True and doc["resultKey"] == "rollcall:job:{u}:results"
    assert 0 < len(doc["summary"]["failed"]) < 3000
    parsed, error = parse_termination_message(text)
    assert error is None and parsed is not None
    assert (parsed.images, parsed.errors, parsed.present) == (5000, 3000, 30)
    small = summary_message({"images": 1, "failed": []}, result_key=None)
    assert json.loads(small) == {"summary": {"images": 1, "failed": []}}


def test_error_message_is_clipped() -> None:
    text = error_message("x" * 10_000, reason="BadInput")
    assert len(text.encode()) <= 4096
    assert parse_termination_message(text)[1] is not None


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def job_env(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> dict[str, Any]:
    """The env the operator would render, pointing at temp dirs and the test redis."""
    env = {
        "ROLLCALL_JOB_NAMESPACE": "school-a",
        "ROLLCALL_JOB_NAME": "rj-6b-monday",
        "ROLLCALL_JOB_UID": "uid-123",
        "ROLLCALL_MODE": "identify",
        "ROLLCALL_CLASS_CODE": "6B",
        "ROLLCALL_GALLERY": "6b",
        "ROLLCALL_ROSTER": json.dumps(["ann", "bob", "cy"]),
        "ROLLCALL_INPUT_DIR": str(tmp_path / "in"),
        "ROLLCALL_REDIS_URL": redis_url,
        "ROLLCALL_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "ROLLCALL_PROGRESS_INTERVAL_SECONDS": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {"env": env, "tmp": tmp_path, "monkeypatch": monkeypatch}


def _toy(settings: JobSettings, min_face_px: int) -> ToyEngine:
    return ToyEngine(min_face_px=min_face_px)


def _termination(job: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((job["tmp"] / "termination-log").read_text())
    return doc


def _enroll_class(job: dict[str, Any]) -> None:
    mp, tmp = job["monkeypatch"], job["tmp"]
    for sid in ("ann", "bob", "cy"):
        save(tmp / "enroll" / sid / "1.png", photo([(sid, 10, 10, 60)]))
    mp.setenv("ROLLCALL_MODE", "enroll")
    mp.setenv("ROLLCALL_INPUT_DIR", str(tmp / "enroll"))
    mp.setenv("ROLLCALL_JOB_UID", "uid-enroll")
    assert main([], engine_loader=_toy) == ExitCode.OK
    mp.setenv("ROLLCALL_MODE", "identify")
    mp.setenv("ROLLCALL_INPUT_DIR", str(tmp / "in"))
    mp.setenv("ROLLCALL_JOB_UID", "uid-123")


def test_enroll_then_identify(
    job_env: dict[str, Any], redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _enroll_class(job_env)
    assert _termination(job_env)["summary"]["enrolled"] == 3
    tmp = job_env["tmp"]
    save(tmp / "in" / "1.png", photo([("ann", 10, 10, 40), ("stranger", 100, 10, 40)]))
    save(tmp / "in" / "2.png", photo([("bob", 10, 10, 40)]))
    (tmp / "in" / "3.jpg").write_bytes(b"not a photo")

    assert main([], engine_loader=_toy) == ExitCode.OK

    term = _termination(job_env)
    assert term["resultKey"] == keys.job_results("school-a", "uid-123")
    s = term["summary"]
    assert (s["images"], s["errors"], s["faces"], s["present"], s["absent"], s["unknown"]) == (
        3,
        1,
        3,
        2,
        1,
        1,
    )
    results = read_results(redis_client, "school-a", "uid-123")
    assert results is not None
    assert results["attendance"]["absent"] == ["cy"]
    progress = redis_client.hgetall(keys.job_progress("school-a", "uid-123"))
    assert progress[b"done"] == progress[b"total"] == b"3"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(line["message"] == "progress 3/3 photos (100%)" for line in lines)
    assert any(line["message"] == "job done" for line in lines)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("no_photos", "no photos"),
        ("no_gallery", "class '6B' has no gallery '6b' for model 'toy-v1'"),
        ("all_corrupt", "no photo could be read"),
        ("bad_mode", "unknown mode"),
        ("missing_input", "does not exist"),
        ("unknown_model", "unknown model"),
    ],
)
def test_bad_input_exits_42_with_a_reason(
    job_env: dict[str, Any], setup: str, reason: str, redis_client: redis.Redis
) -> None:
    mp, tmp = job_env["monkeypatch"], job_env["tmp"]
    (tmp / "in").mkdir()
    loader = _toy
    if setup != "no_gallery":
        _enroll_class(job_env)
    if setup != "no_photos":
        save(tmp / "in" / "1.png", photo([("ann", 10, 10, 40)]))
    if setup == "all_corrupt":
        (tmp / "in" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    if setup == "bad_mode":
        mp.setenv("ROLLCALL_MODE", "delete-everything")
    if setup == "missing_input":
        mp.setenv("ROLLCALL_INPUT_DIR", str(tmp / "nowhere"))
    if setup == "unknown_model":
        from rollcall_job.__main__ import load_engine as loader  # type: ignore[assignment]

        mp.setenv("ROLLCALL_MODEL", "../../etc")
    assert main([], engine_loader=loader) == ExitCode.BAD_INPUT
    term = _termination(job_env)
    assert reason in term["error"] and term["reason"] == "BadInput"
    # results of a run that read nothing are still published for a person to inspect
    assert (read_results(redis_client, "school-a", "uid-123") is not None) == (
        setup == "all_corrupt"
    )


def test_invalid_settings_exit_42(job_env: dict[str, Any]) -> None:
    job_env["monkeypatch"].delenv("ROLLCALL_JOB_UID")
    assert main([], engine_loader=_toy) == ExitCode.BAD_INPUT
    assert "job_uid" in _termination(job_env)["error"]


def test_redis_down_is_transient_and_the_password_never_leaks(
    job_env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    mp, tmp = job_env["monkeypatch"], job_env["tmp"]
    save(tmp / "in" / "1.png", photo([("ann", 10, 10, 40)]))
    mp.setenv("ROLLCALL_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert main([], engine_loader=_toy) == ExitCode.TRANSIENT
    term = (tmp / "termination-log").read_text()
    assert json.loads(term)["reason"] == "Transient"
    out = capsys.readouterr()
    assert "hunter2" not in term + out.out + out.err
    assert ":***@127.0.0.1" in out.out


def test_enroll_into_a_gallery_of_another_metric_is_refused_before_any_work(
    job_env: dict[str, Any], redis_client: redis.Redis
) -> None:
    import numpy as np

    from rollcall_job.gallery import GalleryMeta, GalleryStore

    GalleryStore(redis_client, "school-a").put(
        "6b", GalleryMeta("toy-v1", 3, "euclidean"), {"old": np.ones((1, 3), np.float32)}
    )
    mp, tmp = job_env["monkeypatch"], job_env["tmp"]
    save(tmp / "enroll" / "ann" / "1.png", photo([("ann", 10, 10, 60)]))
    mp.setenv("ROLLCALL_MODE", "enroll")
    mp.setenv("ROLLCALL_INPUT_DIR", str(tmp / "enroll"))
    engines: list[ToyEngine] = []

    def loader(settings: JobSettings, min_face_px: int) -> ToyEngine:
        engines.append(ToyEngine(min_face_px=min_face_px))
        return engines[-1]

    assert main([], engine_loader=loader) == ExitCode.BAD_INPUT
    assert "metric=euclidean" in _termination(job_env)["error"]
    assert [e.detect_calls for e in engines] == [0]
