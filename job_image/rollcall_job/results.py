"""Job results in Redis, published whole or not at all.

The run writes every field into a per-attempt staging hash (``keys.job_results_staging``), then one
MULTI/EXEC renames it onto ``keys.job_results`` and sets the TTL. RENAME is atomic, so a reader of
the final key sees the previous complete result, nothing, or the new complete result: never a half.
A crash (or Redis dying) before the rename leaves only a staging key, which expires on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import redis

from rollcall_contract import keys, redisclient
from rollcall_contract.results import CHUNK_BYTES, IncompleteResults, decode_results, encode_results

__all__ = ["IncompleteResults", "StagingLost", "decode_results", "read_results", "write_results"]


class StagingLost(redis.exceptions.ConnectionError):
    """Staged result fields went missing before the publish (a failover lost writes the old
    primary had taken): the attempt is retried whole (TRANSIENT), never published partial."""


def write_results(
    client: redis.Redis,
    tenant: str,
    job_uid: str,
    attempt: str,
    documents: Mapping[str, Any],
    *,
    ttl_seconds: int,
    chunk_bytes: int = CHUNK_BYTES,
    before_publish: Callable[[], None] | None = None,
    replicas: int = 0,
) -> str:
    """Stage ``documents`` (field -> JSON-able) and publish them atomically; returns the final key.

    Large fields are split over ``field``, ``field:1``, ``field:2``... with ``parts`` recording how
    many, so no single command is huge. ``before_publish`` is a test seam before the rename.
    ``replicas``: how many replicas must hold the result before it counts as written (a cluster or
    Sentinel URL's ``replicas``); fewer raise ``redisclient.NotReplicated`` (TRANSIENT). A staging
    hash that lost fields before the publish raises ``StagingLost`` (TRANSIENT) and publishes nothing.
    """
    fields = encode_results(documents, chunk_bytes=chunk_bytes)
    staging = keys.job_results_staging(tenant, job_uid, attempt)
    final = keys.job_results(tenant, job_uid)
    client.delete(staging)

    def stage(field: str, value: str) -> None:
        # each write carries the TTL, so a run that dies mid-way leaves nothing that never expires
        pipe = client.pipeline(transaction=True)
        pipe.hset(staging, field, value)
        pipe.expire(staging, ttl_seconds)
        pipe.execute()

    for field, value in fields:
        stage(field, value)
    if before_publish is not None:
        before_publish()
    with client.pipeline(transaction=True) as pipe:
        # a failover between two staging writes can drop the ones the old primary took but had not
        # yet replicated, and redis-py then sends the rest to the promoted node: publish only a
        # staging hash that still holds every field (WATCHed, so nothing changes it before EXEC)
        pipe.watch(staging)  # type: ignore[no-untyped-call]
        staged = int(pipe.hlen(staging))
        if staged != len(fields):
            raise StagingLost(f"{staged} of {len(fields)} staged result fields are left")
        pipe.multi()
        # redis-py's cluster pipeline refuses .rename() outright; the raw command is fine in a
        # one-slot transaction (staging and final share the job's hash tag)
        pipe.execute_command("RENAME", staging, final)  # type: ignore[no-untyped-call]
        pipe.expire(final, ttl_seconds)
        pipe.execute()
    # a fresh write and WAIT on one connection: WAIT counts only its own connection's offset
    redisclient.confirm_on(client, keys.job_results_wait(tenant, job_uid), replicas)
    return final


def read_results(client: redis.Redis, tenant: str, job_uid: str) -> dict[str, Any] | None:
    """The published results (field -> decoded JSON), or None when none are published."""
    raw = cast(dict[bytes, bytes], client.hgetall(keys.job_results(tenant, job_uid)))
    if not raw:
        return None
    return decode_results({k.decode(): v.decode() for k, v in raw.items()})
