"""The webhook's signing scheme, payload and backoff (pure; delivery is tested on the real rig)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from rollcall_operator.webhook import backoff, payload, retryable, sign, verify

RJ = {
    "metadata": {"namespace": "school-a", "name": "math-7b", "uid": "u-1"},
    "spec": {"classCode": "MATH-7B", "roster": ["s1"]},
    "status": {"phase": "Succeeded", "summary": {"present": 1}, "reason": "Completed"},
}


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = payload(RJ)
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"k", "1700000000", body) == f"sha256={expected}"
    assert verify(b"k", "1700000000", body, sign(b"k", "1700000000", body))
    assert not verify(b"k", "1700000001", body, sign(b"k", "1700000000", body))
    assert not verify(b"k", "1700000000", body + b" ", sign(b"k", "1700000000", body))


def test_payload_is_canonical_and_has_no_roster() -> None:
    doc = json.loads(payload(RJ))
    assert doc["phase"] == "Succeeded" and doc["summary"] == {"present": 1}
    assert doc["kind"] == "RecognitionJob" and doc["classCode"] == "MATH-7B"
    assert "roster" not in json.dumps(doc)
    assert payload(RJ) == payload(dict(reversed(list(RJ.items()))))


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (30, 300.0)]
)
def test_backoff_doubles_up_to_a_cap(attempt: int, expected: float) -> None:
    assert backoff(attempt, 1.0, 300.0) == expected


@pytest.mark.parametrize(
    ("status", "again"),
    [(None, True), (500, True), (503, True), (429, True), (408, True), (400, False),
     (401, False), (404, False)],
)  # fmt: skip
def test_retryable(status: int | None, again: bool) -> None:
    assert retryable(status) is again
