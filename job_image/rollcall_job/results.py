"""Job results in Redis, published whole or not at all.

The run writes every field into a per-attempt staging hash (``keys.job_results_staging``), then one
MULTI/EXEC renames it onto ``keys.job_results`` and sets the TTL. RENAME is atomic, so a reader of
the final key sees the previous complete result, nothing, or the new complete result: never a half.
A crash (or Redis dying) before the rename leaves only a staging key, which expires on its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis

from rollcall_job import keys

FIELDS = ("summary", "attendance", "photos")
# Redis caps a bulk string at 512 MB; stay far below it and keep each write short so a big result
# does not block the server: the photos list is written in chunks and joined on read.
CHUNK_BYTES = 1 << 20


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def write_results(
    client: redis.Redis,
    job_uid: str,
    attempt: str,
    documents: Mapping[str, Any],
    *,
    ttl_seconds: int,
    chunk_bytes: int = CHUNK_BYTES,
    before_publish: Callable[[], None] | None = None,
) -> str:
    """Stage ``documents`` (field -> JSON-able) and publish them atomically; returns the final key.

    Large fields are split over ``field``, ``field:1``, ``field:2``... with ``parts`` recording how
    many, so no single command is huge. ``before_publish`` is a test seam before the rename.
    """
    if "parts" in documents or any(":" in name for name in documents):
        raise ValueError("document names must not be 'parts' or contain ':'")
    staging, final = keys.job_results_staging(job_uid, attempt), keys.job_results(job_uid)
    client.delete(staging)

    def stage(field: str, value: str) -> None:
        # each write carries the TTL, so a run that dies mid-way leaves nothing that never expires
        pipe = client.pipeline(transaction=True)
        pipe.hset(staging, field, value)
        pipe.expire(staging, ttl_seconds)
        pipe.execute()

    parts: dict[str, int] = {}
    for name, doc in documents.items():
        pieces = _chunks(json.dumps(doc, separators=(",", ":")), chunk_bytes)
        parts[name] = len(pieces)
        for i, piece in enumerate(pieces):
            stage(name if i == 0 else f"{name}:{i}", piece)
    stage("parts", json.dumps(parts))
    if before_publish is not None:
        before_publish()
    pipe = client.pipeline(transaction=True)
    pipe.rename(staging, final)
    pipe.expire(final, ttl_seconds)
    pipe.execute()
    return final


class IncompleteResults(ValueError):
    """The stored hash lacks parts it says it has (should be impossible: it was renamed whole)."""


def decode_results(fields: Mapping[str, str]) -> dict[str, Any]:
    """Join and decode a results hash as ``write_results`` stored it (pure: the API reuses it).

    A big field is split over ``name``, ``name:1``... with ``parts`` = {name: count}.
    """
    if "parts" not in fields:
        raise IncompleteResults("results without a parts record")
    out: dict[str, Any] = {}
    try:
        for name, n in json.loads(fields["parts"]).items():
            text = "".join(fields[name if i == 0 else f"{name}:{i}"] for i in range(int(n)))
            out[str(name)] = json.loads(text)
    except KeyError as e:
        raise IncompleteResults(f"missing part {e}") from e
    except (ValueError, TypeError, AttributeError) as e:
        raise IncompleteResults(f"undecodable results: {type(e).__name__}") from e
    return out


def read_results(client: redis.Redis, job_uid: str) -> dict[str, Any] | None:
    """The published results (field -> decoded JSON), or None when none are published."""
    raw = cast(dict[bytes, bytes], client.hgetall(keys.job_results(job_uid)))
    if not raw:
        return None
    return decode_results({k.decode(): v.decode() for k, v in raw.items()})
