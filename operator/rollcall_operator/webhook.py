"""The completion webhook: one signed POST per RJ that reached a terminal phase.

Pure parts (payload, signature, backoff) are separate from the one function that does HTTP, so the
signing scheme is unit-tested and a receiver can re-implement it from this docstring:

    X-Rollcall-Timestamp: <unix seconds>
    X-Rollcall-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
    X-Rollcall-Delivery:  <RJ uid>   (the same on every retry: receivers de-duplicate on it)

Signing the timestamp with the body lets receivers reject replays older than a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from rollcall_contract.model import API_VERSION, KIND

SIGNATURE_HEADER = "X-Rollcall-Signature"
TIMESTAMP_HEADER = "X-Rollcall-Timestamp"
DELIVERY_HEADER = "X-Rollcall-Delivery"
# Statuses worth retrying: the receiver may be restarting or rate-limiting us.
_RETRYABLE_4XX = {408, 425, 429}


def payload(rj: Mapping[str, Any]) -> bytes:
    """The JSON body: which RJ, how it ended and its summary (no photos, no student data)."""
    meta, status = rj["metadata"], rj.get("status") or {}
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
        "classCode": (rj.get("spec") or {}).get("classCode"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "summary": status.get("summary"),
        "resultKey": status.get("resultKey"),
        "startTime": status.get("startTime"),
        "completionTime": status.get("completionTime"),
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (used by the tests): constant-time comparison."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): base * 2^(n-1), capped."""
    return float(min(cap, base * 2 ** (attempt - 1)))


def retryable(status: int | None) -> bool:
    return status is None or status >= 500 or status in _RETRYABLE_4XX


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    secret: bytes,
    delivery: str,
    timestamp: str,
    timeout: float,
) -> tuple[int | None, str | None]:
    """One attempt: (HTTP status, error text). A status of 2xx means delivered."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: delivery,
        "User-Agent": "rollcall-operator",
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return resp.status, None if resp.status < 300 else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        return None, f"{type(e).__name__}: {e}"[:300]
