"""The completion webhook: one signed POST per RJ that reached a terminal phase.

Pure parts (payload, signature, backoff) are separate from the one function that does HTTP, so the
signing scheme is unit-tested and a receiver can re-implement it from this docstring:

    X-Rollcall-Timestamp: <unix seconds>
    X-Rollcall-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
    X-Rollcall-Delivery:  <RJ uid>   (the same on every retry: receivers de-duplicate on it)

Signing the timestamp with the body lets receivers reject replays older than a few minutes. Each
school namespace has its own signing Secret (name fixed by the operator's settings, never by the RJ),
so one school cannot forge another's callbacks. Where a POST may go is ``egress``'s business.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from rollcall_contract.model import API_VERSION, KIND
from rollcall_operator import egress

log = logging.getLogger("rollcall.operator.webhook")

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


# A receiver acknowledges with its status line; its body is never used, so at most this much of it
# is read (a huge or endless body must not grow the operator's memory: it serves every school).
MAX_RESPONSE_BYTES = 4096
DENIED = "the callback destination is not allowed"
UNREACHABLE = "delivery failed: no HTTP answer (connection refused, reset or timed out)"


@dataclass(frozen=True)
class Attempt:
    """How one POST went. ``error`` is shown to the RJ's owner: it never says which internal
    address or port answered (a refused destination is refused before any connection)."""

    status: int | None
    error: str | None
    retry: bool

    @property
    def delivered(self) -> bool:
        return self.error is None


def session(allow: egress.Allowlist) -> aiohttp.ClientSession:
    """The operator's webhook client: vetted DNS answers only, no proxies from the environment.

    No connection cap here (aiohttp's default is 100 shared): waiting for a pooled connection
    counts against a POST's timeout, so one school's hung receivers would time out every other
    school's POSTs. ``Slots`` bounds connections per school instead.
    """
    connector = aiohttp.TCPConnector(
        resolver=egress.VettingResolver(allow), use_dns_cache=False, limit=0
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


# POSTs in flight per school namespace: bounds the operator's sockets, and a school's slow
# receivers queue only that school's deliveries.
PER_SCHOOL_POSTS = 8


class Slots:
    """At most ``per_school`` POSTs at once per school namespace (fair share of the operator)."""

    def __init__(self, per_school: int = PER_SCHOOL_POSTS) -> None:
        self.per_school = per_school
        self._slots: dict[str, asyncio.Semaphore] = {}

    def __call__(self, school: str) -> asyncio.Semaphore:
        if (slot := self._slots.get(school)) is None:
            slot = self._slots[school] = asyncio.Semaphore(self.per_school)
        return slot


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    allow: egress.Allowlist,
    secret: bytes,
    delivery: str,
    timestamp: str,
    timeout: float,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> Attempt:
    """One attempt through ``http`` (made by ``session``, whose resolver vets host names)."""
    try:
        egress.vet_url(url, allow)  # scheme, userinfo, cluster names, literal addresses
    except egress.EgressDenied as e:
        return Attempt(None, str(e), retry=False)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: delivery,
        "User-Agent": "rollcall-operator",
    }
    try:
        async with http.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            await resp.content.read(max_response_bytes)
            resp.close()  # drop the connection rather than drain whatever else is coming
            status = resp.status
    except egress.EgressDenied:
        return Attempt(None, DENIED, retry=False)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        log.info("webhook %s: %s", delivery, type(e).__name__)
        return Attempt(None, UNREACHABLE, retry=True)
    if status < 300:
        return Attempt(status, None, retry=False)
    return Attempt(status, f"HTTP {status}", retry=retryable(status))
