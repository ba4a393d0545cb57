"""What the API reads from and writes to Redis: idempotency claims, job progress and results.

Key names come from ``rollcall_contract.keys`` only, so the job, the operator and the API agree.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from rollcall_api.errors import ApiError
from rollcall_contract import keys, redisclient
from rollcall_contract import results as results_codec

log = logging.getLogger("rollcall_api.store")

# Delete the claim only if it still holds our value: a slow failing request must not drop a claim
# that expired and was re-taken by another request meanwhile.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """Who owns an Idempotency-Key: ``won`` is True for the request that set it."""

    won: bool
    name: str
    fingerprint: str
    raw: str


def redis_unavailable(exc: Exception) -> ApiError:
    log.error("redis unavailable", extra={"error": repr(exc)})
    return ApiError(
        503, "the result store is unavailable, retry later", headers={"Retry-After": "1"}
    )


class Store:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except redisclient.ERRORS as exc:
            raise redis_unavailable(exc) from None

    async def claim(self, namespace: str, key: str, name: str, fingerprint: str, ttl: int) -> Claim:
        """SET NX the key to (name, fingerprint): exactly one concurrent request wins. ``name`` is
        new for every request, so finding our own value means our SET won (the client resends a
        command whose connection was lost: ``redisclient.async_client(resend=True)``)."""
        value = json.dumps({"name": name, "fingerprint": fingerprint}, separators=(",", ":"))
        rkey = keys.idempotency(namespace, key)
        try:
            for _ in range(3):
                if await self.redis.set(rkey, value, nx=True, ex=ttl):
                    return Claim(True, name, fingerprint, value)
                existing = await self.redis.get(rkey)
                if existing is not None:  # else it expired between SET and GET: try again
                    text = _text(existing)
                    if text == value:  # our SET took effect, its reply was lost and it was resent
                        return Claim(True, name, fingerprint, value)
                    data = json.loads(text)
                    return Claim(False, str(data["name"]), str(data["fingerprint"]), text)
        except redisclient.ERRORS as exc:
            raise redis_unavailable(exc) from None
        raise ApiError(503, "idempotency key is churning, retry later")

    async def holds(self, namespace: str, key: str, claim: Claim) -> bool:
        """Whether the Idempotency-Key still holds ``claim`` (not released, not expired)."""
        try:
            value = await self.redis.get(keys.idempotency(namespace, key))
        except redisclient.ERRORS as exc:
            raise redis_unavailable(exc) from None
        return value is not None and _text(value) == claim.raw

    async def release(self, namespace: str, key: str, claim: Claim) -> None:
        """Give up a claim whose job could not be created, so a retry can create it."""
        try:
            await self.redis.eval(_RELEASE, 1, keys.idempotency(namespace, key), claim.raw)
        except redisclient.ERRORS as exc:
            log.warning("idempotency claim not released", extra={"error": repr(exc)})

    async def progress(self, namespace: str, uid: str) -> tuple[int, int] | None:
        """The job's own (done, total), fresher than the RJ status; None if not written yet."""
        try:
            key = keys.job_progress(namespace, uid)
            done, total = await self.redis.hmget(key, ["done", "total"])
        except redisclient.ERRORS as exc:
            log.warning("progress not read", extra={"error": repr(exc)})
            return None
        if done is None or total is None:
            return None
        try:
            return int(done), int(total)
        except ValueError:
            return None

    async def results(self, namespace: str, uid: str) -> dict[str, Any] | None:
        """The published results (field -> decoded JSON); None if the job wrote none."""
        try:
            raw = await self.redis.hgetall(keys.job_results(namespace, uid))
        except redisclient.ERRORS as exc:
            raise redis_unavailable(exc) from None
        if not raw:
            return None
        return decode_results({_text(k): _text(v) for k, v in raw.items()})


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def decode_results(fields: dict[str, str]) -> dict[str, Any]:
    """The job's results hash decoded by the job's own codec; a broken one is a 502, not a 500."""
    try:
        return results_codec.decode_results(fields)
    except results_codec.IncompleteResults:
        raise ApiError(502, "stored results are incomplete", code="results_corrupt") from None
