"""``rollcall erase`` waits out a 503 ``erase_unconfirmed`` or ``unavailable`` by repeating the DELETE.

Real servers only: the API (uvicorn, in a thread) erases on the primary of a primary + replica
pair (tests/replicarig.py) and records Events in the real apiserver; the CLI runs its real
commands against it. A SIGSTOPped replica cannot confirm, so the API answers 503 until it runs
again; connections the primary drops make the API's erase (never resent inside the API) answer
503 ``unavailable`` once. The table of answers the CLI repeats comes first (pure:
``httpx.Response`` values).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from apirig import api_settings, serve_in_thread
from replicarig import Pair, replica_pair, stopped, until
from rollcall_api.erasure import INTERRUPTED_MESSAGE, unconfirmed_message
from rollcall_cli.cli import Exit, Repeat, app, repeat_pause
from rollcall_contract import acl, keys
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.results import write_results

UNCONFIRMED = {"error": {"code": "erase_unconfirmed", "message": "erased on the primary"}}
UNAVAILABLE = {"error": {"code": "unavailable", "message": "the result store is unavailable"}}
INTERRUPTED = {"error": {"code": "erase_interrupted", "message": INTERRUPTED_MESSAGE}}


def _repeat(pause: float, code: str = "erase_unconfirmed") -> Repeat:
    message = {
        "erase_unconfirmed": "erased on the primary",
        "erase_interrupted": INTERRUPTED_MESSAGE,
        "unavailable": UNAVAILABLE_TEXT,
    }[code]
    return Repeat(pause, f"{message} ({code})", code)


UNAVAILABLE_TEXT = "the result store is unavailable"


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "repeat"),
    [
        (503, UNCONFIRMED, "1", _repeat(1.0)),
        (503, UNCONFIRMED, "4", _repeat(4.0)),
        (503, UNCONFIRMED, "600", _repeat(10.0)),  # clipped: the deadline is checked often
        (503, UNCONFIRMED, "0", _repeat(1.0)),  # never a busy loop
        (503, UNCONFIRMED, None, _repeat(1.0)),
        (503, UNCONFIRMED, "nan", _repeat(1.0)),
        (503, UNCONFIRMED, "Wed, 21 Oct 2026 07:28:00 GMT", _repeat(1.0)),
        (503, UNAVAILABLE, "1", _repeat(1.0, "unavailable")),  # Redis unreachable: a failover
        (503, UNAVAILABLE, None, _repeat(1.0, "unavailable")),
        (503, INTERRUPTED, "1", _repeat(1.0, "erase_interrupted")),  # a failover mid-erase
        (503, {"error": {"code": "erase_contended", "message": "x"}}, "1", None),  # a 409's code
        (503, {"error": {"code": "redis_unavailable", "message": "x"}}, "1", None),  # as before
        (503, {"detail": "no"}, "1", None),
        (502, UNCONFIRMED, "1", None),
        (502, UNAVAILABLE, "1", None),
        (200, {"templates": 1}, None, None),
        (404, {"error": {"code": "not_found", "message": "x"}}, None, None),
    ],
)
def test_which_answers_are_repeated_and_after_how_long(
    status: int, body: dict[str, Any], retry_after: str | None, repeat: Repeat | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    assert repeat_pause(httpx.Response(status, json=body, headers=headers)) == repeat


def test_a_503_that_is_not_json_is_not_repeated() -> None:
    assert repeat_pause(httpx.Response(503, text="<html>bad gateway</html>")) is None


# --- the CLI against the API over a primary and a stopped replica ----------------------------------

MODEL = GalleryMeta("mobilefacenet-v1", 3, "cosine")
CLASS, STUDENT = "7B", "s-001"
WAIT_LINE = "erased on the primary, waiting for replicas to confirm; repeating in 1 s"


class Cli:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key

    def __call__(self, *args: str) -> Any:
        prefix = ["--url", self.url, "--api-key", self.key]
        return CliRunner().invoke(app, [*prefix, *args], catch_exceptions=False)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with replica_pair(tmp_path) as rig:
        yield rig


@pytest.fixture
def cli(tmp_path: Path, kubeconfig: Path, namespace: str, pair: Pair) -> Iterator[Cli]:
    """The API as its own Redis user on the pair's primary; a replica gets 500 ms to confirm."""
    settings, issued = api_settings(
        tmp_path,
        kubeconfig,
        pair.url(acl.API_USER),
        {"north": [namespace]},
        erase_replica_timeout_ms=500,  # Retry-After: 1
    )
    with pair.admin(pair.primary) as admin:  # one template and one result naming the student
        GalleryStore(admin, namespace).put(CLASS, MODEL, {STUDENT: [[0.5] * 3], "s-002": [[1] * 3]})
        doc = {"attendance": {"present": [{"student": STUDENT}]}}
        write_results(admin, namespace, "uid-1", "1", doc, ttl_seconds=600)
    with pair.admin(pair.replica) as replica:
        gallery = keys.gallery(namespace, CLASS, MODEL.model_id)
        until("the replica to hold the enrolment", lambda: replica.hexists(gallery, STUDENT))
    with serve_in_thread(settings) as url:
        yield Cli(url, issued["north"])


def _text(output: str) -> str:
    """The CLI's output with the console's line wrapping (80 columns here) undone."""
    return " ".join(output.split())


ERASE = ("erase", "student", "--class", CLASS, STUDENT, "--yes")
COUNTS = f"templates=1 models={MODEL.model_id} results=1"


def test_wait_0_fails_at_once_saying_the_erase_is_on_the_primary(cli: Cli, pair: Pair) -> None:
    with stopped(pair.replica):
        res = cli(*ERASE, "--wait", "0")
    assert res.exit_code == Exit.UNAVAILABLE, res.output
    assert unconfirmed_message(0, 1) in _text(res.stderr)
    assert "is erased on the primary but not confirmed" in _text(res.stderr)
    assert "repeat this command" in _text(res.stderr)
    assert WAIT_LINE not in res.stderr


def test_repeats_until_the_replica_confirms_and_prints_the_first_counts(
    cli: Cli, pair: Pair
) -> None:
    resume = threading.Timer(1.5, os.kill, (pair.replica.process.pid, signal.SIGCONT))
    os.kill(pair.replica.process.pid, signal.SIGSTOP)
    resume.start()
    try:
        res = cli(*ERASE, "--wait", "20")
    finally:
        resume.join()
    assert res.exit_code == 0, res.output
    assert WAIT_LINE in res.stderr
    assert COUNTS in _text(res.stdout)  # the first attempt's counts, not the repeat's zeros
    assert cli(*ERASE, "--wait", "20").exit_code == Exit.NOT_FOUND  # confirmed: erased is erased


def test_wait_runs_out_with_the_api_message_and_unavailable(cli: Cli, pair: Pair) -> None:
    with stopped(pair.replica):
        began = time.monotonic()
        res = cli("erase", "class", CLASS, "--yes", "--wait", "2.5")
        took = time.monotonic() - began
    assert res.exit_code == Exit.UNAVAILABLE, res.output
    assert WAIT_LINE in res.stderr  # then a shorter last wait, as long as the deadline leaves
    assert "after waiting 2.5 s: repeat this command" in _text(res.stderr)
    assert took >= 2.5  # never gives up early; the last DELETE ends it


def test_nothing_unconfirmed_answers_at_once_as_before(cli: Cli) -> None:
    res = cli(*ERASE, "--wait", "20")
    assert res.exit_code == 0, res.output
    assert COUNTS in _text(res.stdout) and "repeating" not in res.stderr
    again = cli(*ERASE, "--wait", "20")  # any other error is not repeated: a 404 at once
    assert again.exit_code == Exit.NOT_FOUND and "repeating" not in again.stderr


def test_an_erase_that_found_redis_unreachable_is_repeated(cli: Cli, pair: Pair) -> None:
    """The primary drops every client connection (as a restart or a failover leaves them): the
    API's first erase answers 503 ``unavailable`` (an erase is never resent inside the API), the
    CLI repeats it and prints the first successful attempt's counts."""
    other = cli("erase", "student", "--class", CLASS, "s-002", "--yes")  # the API's pool in use
    assert other.exit_code == 0, other.output
    with pair.admin(pair.primary) as admin:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    res = cli(*ERASE, "--wait", "20")
    assert res.exit_code == 0, res.output
    assert "the API could not reach its store; repeating in 1 s" in res.stderr
    assert COUNTS in _text(res.stdout)
